"""LotteryTrainer and LotteryCallback under DDP: 2 CPU processes (torchrun, gloo) on a tiny model.

One torchrun launch (tests/scripts/ddp_lottery.py) runs everything and reports digests gathered from both ranks;
the checks below read its report. The single-process reference runs here, with the same global batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

from hf_lottery import TicketMask
from hf_lottery.training.distributed import broadcast_weights_, is_distributed, mask_digest, sync_mask
from hf_lottery.utils.io import load_tensors

SCRIPT = REPO_ROOT / "tests" / "scripts" / "ddp_lottery.py"
sys.path.insert(0, str(SCRIPT.parent))
import rank_utils  # noqa: E402  (tests/scripts/)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [*torchrun, str(SCRIPT), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads((out / "result.json").read_text()), out


def _all_equal(values: list) -> bool:
    return len(values) == 2 and values[0] == values[1]


def test_theta0_is_the_same_on_every_rank(ddp_run):
    # Each rank built its model from another seed: θ0 must come from the main process.
    result, _ = ddp_run
    assert result["world_size"] == 2
    assert _all_equal(result["theta0"])


def test_every_round_has_the_same_mask_and_weights_on_every_rank(ddp_run):
    result, _ = ddp_run
    masks, weights = result["round_masks"], result["round_weights"]
    assert len(masks[0]) == len(result["history"]) == 2
    assert _all_equal(masks) and _all_equal(weights)
    assert _all_equal(result["ticket"])


def test_pruned_gradients_stay_zero_under_ddp(ddp_run):
    # Checked before every optimizer step, after DDP's all-reduce (and no_sync micro-batches for the fixed mask).
    result, _ = ddp_run
    assert result["optimizer_steps"][0] > 0 and result["fixed_optimizer_steps"][0] > 0
    for key in ("bad_grad_steps", "callback_bad_grad_steps", "fixed_bad_grad_steps"):
        assert result[key] == [0, 0], key
    assert result["fixed_zeros_kept"] == [True, True]


def test_only_the_main_process_writes(ddp_run):
    result, out = ddp_run
    assert result["non_main_writes"][0] == []
    # Other ranks write only their own RNG state into checkpoints (the Trainer's design).
    assert result["non_main_writes"][1], "the write recorder saw nothing"
    assert all(Path(p).name == "rng_state_1.pth" for p in result["non_main_writes"][1])
    full = out / "full"
    for name in ("lottery_history.json", "lottery_state/state.json", "lottery_state/theta0.safetensors"):
        assert (full / name).is_file(), name
    assert (full / "round_1" / "checkpoint-4" / "model.safetensors").is_file()


def test_resume_under_ddp_gives_the_uninterrupted_ticket(ddp_run):
    result, _ = ddp_run
    assert result["interrupted"]
    assert _all_equal(result["resumed_ticket"])
    assert result["resumed_ticket"] == result["ticket"]
    assert result["resumed_history"] == result["history"]


def test_lottery_callback_under_ddp(ddp_run):
    result, _ = ddp_run
    assert _all_equal(result["callback_mask"])
    assert result["callback_sparsity"] == pytest.approx(0.2)
    assert _all_equal(result["fixed_weights"])


def test_distillation_under_ddp(ddp_run):
    # The round-0 teacher is the same on every rank, as are the distilled rounds; it was written once, by rank 0.
    result, out = ddp_run
    assert _all_equal(result["distill_teacher"]) and _all_equal(result["distill_round_weights"])
    assert result["distill_bad_grad_steps"] == [0, 0]
    assert (out / "distilled" / "lottery_state" / "teacher.safetensors").is_file()
    plain = [r["train_loss"] for r in result["history"]]
    distilled = [r["train_loss"] for r in result["distill_history"]]
    assert distilled[0] == plain[0] and distilled[1] != plain[1]  # round 0 trains the teacher, round 1 learns from it


def test_ticket_matches_a_single_process_run(ddp_run, tmp_path):
    result, out = ddp_run
    single = rank_utils.single_process_run(str(tmp_path), rank_utils.DDP_RUN)
    ddp_ticket = TicketMask(load_tensors(out / "ticket.safetensors"))
    rank_utils.assert_same_ticket(single.ticket, ddp_ticket)
    assert [r["sparsity"] for r in single.lottery_history] == [r["sparsity"] for r in result["history"]]


def test_helpers_are_no_ops_in_one_process(bert):
    assert not is_distributed()
    before = {k: v.clone() for k, v in bert.state_dict().items()}
    broadcast_weights_(bert)
    assert all(torch.equal(before[k], v) for k, v in bert.state_dict().items())
    mask = TicketMask({"a": torch.tensor([True, False])})
    assert sync_mask(mask) is mask
    assert mask_digest(mask) == mask_digest(TicketMask({"a": torch.tensor([1, 0])}))
    assert mask_digest(mask) != mask_digest(TicketMask({"a": torch.tensor([True, True])}))
