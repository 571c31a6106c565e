"""Run under `torchrun --nproc_per_node 2` (gloo, CPU) by tests/test_fsdp.py: LotteryTrainer under FSDP2.

accelerate turns FSDP on only for accelerator devices (CUDA, XPU, ...); on CPU processes it silently falls back to
DDP-style MULTI_CPU. This harness lets accelerate keep the FSDP plugin the Trainer passes it on CPU — the sharding
itself (`fully_shard` on a gloo mesh) is torch's, exactly as on GPUs. Each rank builds the tiny model from a
different seed, then one IMP run (rounds at 0 / 20 / 40 %, rewinding to θ0) records on every rank: that the
parameters are sharded DTensors while training, θ0, every round's mask, whether each round started from exactly
θ0 ⊙ mask, whether pruned gradients (before every optimizer step) and weights (after every round) are zero in
the rank's shard, and the trained weights; then the same run with learning-rate rewinding, and the first run on
tiny Llama, Qwen2 and GPT-2 causal LMs. Rank 0 writes `result.json` and `ticket.safetensors`; the final model
is saved with `save_model` (full state dict) for the test to load without hf_lottery.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import accelerate.state
import torch
import torch.distributed as dist
from accelerate.utils import DistributedType

_original_init = accelerate.state.AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    # Every later AcceleratorState() copies the process state (MULTI_CPU) back in: keep FSDP once a plugin is set.
    if fsdp_plugin is not None:
        self.fsdp_plugin = fsdp_plugin
    if getattr(self, "fsdp_plugin", None) is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP


accelerate.state.AcceleratorState.__init__ = _fsdp_on_cpu

torch.set_num_threads(1)
import rank_utils  # noqa: E402  (tests/scripts/)
from rank_utils import (  # noqa: E402
    DECODER_BLOCKS,
    FSDP_RUN,
    digest,
    exit_without_teardown,
    fsdp_decoder_run,
    gather,
    model_for_rank,
    train_datasets,
)  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hf_lottery import LotteryArguments, LotteryTrainer  # noqa: E402
from hf_lottery.training.run_state import snapshot_weights  # noqa: E402
from hf_lottery.training.sharding import local_part, local_tensor  # noqa: E402
from hf_lottery.utils.io import save_tensors  # noqa: E402


def lottery_args(output_dir: str, **overrides) -> LotteryArguments:
    return rank_utils.lottery_args(output_dir, **{**FSDP_RUN, **overrides})


class Probe(TrainerCallback):
    """Every round: sharding, exact rewinding and the mask's zeros in this rank's shards."""

    def __init__(self, trainer: LotteryTrainer):
        self.trainer = trainer
        self.sharded: list[bool] = []
        self.masks: list[str] = []
        self.rewound_exactly: list[bool] = []
        self.bad_grad_steps = 0
        self.steps = 0
        self.zero_weights: list[bool] = []
        self.weights: list[str] = []
        self._last_trained: dict[str, torch.Tensor] | None = None

    def _local_keep(self):
        params = dict(self.trainer.model.named_parameters())
        return [(params[n], local_part(k, params[n])) for n, k in self.trainer.current_mask.items()]

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self.trainer
        params = dict(trainer.model.named_parameters())
        self.sharded.append(all(isinstance(params[n], DTensor) for n in trainer.current_mask))
        self.masks.append(digest(trainer.current_mask.to_dict()))
        mask = trainer.current_mask
        # A round starts from θ0 (round 0, rewind="pretrained") or from the previous round's weights (rewind="lr").
        start = trainer._rounds.theta0 if args.rewind == "pretrained" or not self._last_trained else self._last_trained
        full = snapshot_weights(trainer.model)  # gathered on every rank
        self.rewound_exactly.append(
            all(torch.equal(full[n], start[n] * mask[n] if n in mask else start[n]) for n in params)
        )

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.steps += 1
        for param, keep in self._local_keep():
            grad = param.grad
            if grad is not None and bool(local_tensor(grad)[~keep].ne(0).any()):
                self.bad_grad_steps += 1
                return

    def on_train_end(self, args, state, control, **kwargs):
        self.zero_weights.append(all(bool(local_tensor(p)[~k].eq(0).all()) for p, k in self._local_keep()))
        self._last_trained = snapshot_weights(self.trainer.model)
        self.weights.append(digest(self._last_trained))


def run_and_record(trainer: LotteryTrainer) -> dict:
    """Train `trainer`'s lottery under a `Probe` and gather what every rank saw."""
    probe = Probe(trainer)
    trainer.add_callback(probe)
    trainer.train()
    return {
        "sharded": gather(probe.sharded),
        "theta0": gather(digest(trainer._rounds.theta0)),
        "round_masks": gather(probe.masks),
        "rewound_exactly": gather(probe.rewound_exactly),
        "bad_grad_steps": gather(probe.bad_grad_steps),
        "optimizer_steps": gather(probe.steps),
        "zero_weights": gather(probe.zero_weights),
        "round_weights": gather(probe.weights),
        "ticket": gather(digest(trainer.ticket.to_dict())),
        "sparsities": [r["sparsity"] for r in trainer.lottery_history],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    out = Path(parser.parse_args().out)
    train, dev = train_datasets()
    args = lottery_args(str(out / "run"))  # initialises the process group (gloo) from torchrun's environment
    rank = dist.get_rank()

    trainer = LotteryTrainer(model=model_for_rank(rank), args=args, train_dataset=train, eval_dataset=dev)
    result = run_and_record(trainer)
    trainer.save_model(str(out / "model"))
    result_ticket = trainer.ticket
    result["world_size"] = dist.get_world_size()
    result["distributed_type"] = str(trainer.accelerator.distributed_type)
    result["final_weights"] = digest(snapshot_weights(trainer.model))

    # Learning-rate rewinding: each round starts from the previous round's trained weights, pruned.
    trainer = LotteryTrainer(
        model=model_for_rank(rank), args=lottery_args(str(out / "lr"), rewind="lr"), train_dataset=train
    )
    result["lr"] = run_and_record(trainer)
    # The decoders (Llama, Qwen2 with grouped-query attention, GPT-2 with its tied lm_head), each sharded by block.
    for family in DECODER_BLOCKS:
        train, _ = train_datasets(family)
        args = rank_utils.lottery_args(str(out / family), **fsdp_decoder_run(family))
        trainer = LotteryTrainer(model=model_for_rank(rank, family), args=args, train_dataset=train)
        result[family] = run_and_record(trainer)
        if rank == 0:
            save_tensors(out / f"ticket-{family}.safetensors", trainer.ticket.to_dict())
    if rank == 0:
        save_tensors(out / "ticket.safetensors", result_ticket.to_dict())
        (out / "result.json").write_text(json.dumps(result, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_without_teardown()
