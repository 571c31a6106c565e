"""LotteryTrainer under FSDP2 (`fully_shard`): 2 CPU processes (torchrun, gloo) on a tiny model.

One torchrun launch (tests/scripts/fsdp_lottery.py) runs the lottery and reports what every rank saw; the checks
below read its report. The single-process reference runs here, with the same global batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO_ROOT
from transformers import AutoModelForSequenceClassification

from hf_lottery import TicketMask
from hf_lottery.training.distributed import fsdp_version
from hf_lottery.training.run_state import snapshot_weights
from hf_lottery.training.sharding import is_fsdp_sharded, local_part, unsharded
from hf_lottery.utils.io import load_tensors

SCRIPT = REPO_ROOT / "tests" / "scripts" / "fsdp_lottery.py"
sys.path.insert(0, str(SCRIPT.parent))
import rank_utils  # noqa: E402  (tests/scripts/)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("fsdp")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*torchrun, str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads((out / "result.json").read_text()), out


def _all_equal(values: list) -> bool:
    return len(values) == 2 and values[0] == values[1]


def test_the_trainer_shards_the_model_in_every_round(fsdp_run):
    result, _ = fsdp_run
    assert result["world_size"] == 2 and result["distributed_type"] == "DistributedType.FSDP"
    assert result["sharded"] == [[True, True, True], [True, True, True]]


def test_theta0_masks_and_weights_agree_across_ranks(fsdp_run):
    result, _ = fsdp_run
    assert _all_equal(result["theta0"])  # each rank built its model from another seed
    assert _all_equal(result["round_masks"]) and len(set(result["round_masks"][0])) == 3
    assert _all_equal(result["round_weights"]) and _all_equal(result["ticket"])
    assert result["sparsities"] == pytest.approx([0.0, 0.2, 0.4])


@pytest.mark.parametrize("run", ["pretrained", "lr"])
def test_every_round_starts_from_its_rewind_point_and_keeps_pruned_weights_zero(fsdp_run, run):
    result, _ = fsdp_run
    record = result if run == "pretrained" else result["lr"]
    # Rewound: θ0 ⊙ mask (or the previous round's weights ⊙ mask), written into each rank's shard.
    assert record["rewound_exactly"] == [[True, True, True], [True, True, True]]
    assert record["bad_grad_steps"] == [0, 0]  # pruned gradients zero in each shard before every optimizer step
    assert record["zero_weights"] == [[True, True, True], [True, True, True]]
    assert _all_equal(record["round_masks"])
    assert result["optimizer_steps"][0] > 0


def test_ticket_matches_a_single_process_run(fsdp_run, tmp_path):
    result, out = fsdp_run
    single = rank_utils.single_process_run(str(tmp_path), rank_utils.FSDP_RUN)
    fsdp_ticket = TicketMask(load_tensors(out / "ticket.safetensors"))
    rank_utils.assert_same_ticket(single.ticket, fsdp_ticket)
    assert [r["sparsity"] for r in single.lottery_history] == pytest.approx(result["sparsities"])


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_decoders_shard_rewind_and_find_the_single_process_ticket(fsdp_run, family, tmp_path):
    result, out = fsdp_run
    record = result[family]
    assert record["sharded"] == [[True, True, True], [True, True, True]]
    assert _all_equal(record["theta0"]) and _all_equal(record["ticket"])
    assert _all_equal(record["round_masks"]) and len(set(record["round_masks"][0])) == 3
    assert record["rewound_exactly"] == [[True, True, True], [True, True, True]]
    assert record["bad_grad_steps"] == [0, 0]
    assert record["zero_weights"] == [[True, True, True], [True, True, True]]
    assert record["sparsities"] == pytest.approx([0.0, 0.2, 0.4], abs=1e-4)  # whole weights of an odd total
    single = rank_utils.single_process_run(str(tmp_path), rank_utils.fsdp_decoder_run(family), family)
    fsdp_ticket = TicketMask(load_tensors(out / f"ticket-{family}.safetensors"))
    rank_utils.assert_same_ticket(single.ticket, fsdp_ticket)


def test_the_saved_model_loads_without_hf_lottery_with_its_zeros(fsdp_run):
    result, out = fsdp_run
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    ticket = TicketMask(load_tensors(out / "ticket.safetensors"))
    params = dict(model.named_parameters())
    for name, keep in ticket.items():
        assert bool(params[name][~keep].eq(0).all()), name
    assert rank_utils.digest(snapshot_weights(model)) == result["final_weights"]


def test_the_helpers_are_no_ops_without_fsdp(bert):
    assert not is_fsdp_sharded(bert)
    weight = bert.bert.encoder.layer[0].attention.self.query.weight
    full = torch.ones_like(weight, dtype=torch.bool)
    assert local_part(full, weight) is full
    with unsharded(bert) as model:
        assert model is bert


def test_fsdp_version_follows_transformers_and_accelerate(monkeypatch):
    assert fsdp_version(SimpleNamespace(fsdp=None)) is None
    assert fsdp_version(SimpleNamespace(fsdp=True, fsdp_config={})) == 2  # transformers' default
    assert fsdp_version(SimpleNamespace(fsdp=True, fsdp_config={"version": 1})) == 1
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert fsdp_version(SimpleNamespace(fsdp=None)) == 1  # accelerate's default
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert fsdp_version(SimpleNamespace(fsdp=None)) == 2
