"""Training-step overhead of keeping a 50 %-sparse model sparse.

Three ways to train the same 50 %-sparse model on the same batches, alternating in one process:
  plain   - transformers.Trainer, weights zeroed once, nothing enforced (the floor; it lets pruned weights grow)
  lottery - LotteryTrainer with the mask enforced (gradient hooks + weight reset after each optimizer step)
  torch   - transformers.Trainer on the model masked with torch.nn.utils.prune (forward pre-hooks, weight_orig)
Step time = wall time between on_step_begin and on_step_end (forward, backward, clipping, AdamW, masking).
End-to-end ratios carry the step-to-step noise (several per cent on a shared CPU), larger than the enforcement
itself; `--isolated N` therefore also times what the enforcer adds to a step on its own, N times each: the gradient
masking (one multiply per prunable gradient, as the hooks do it) and the weight reset after the optimizer step, and
reports their sum as a fraction of the plain step's median.

    python bench/masking_overhead.py --steps 20 --blocks 4 --seq-len 64 --batch-size 32
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from _common import machine, minilm_classifier
from datasets import Dataset
from torch.nn.utils import prune as torch_prune
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_lottery import LotteryArguments, LotteryTrainer, prune
from hf_lottery.training.enforcement import MaskEnforcer, multiply_by_mask_


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per block")
    parser.add_argument("--blocks", type=int, default=4, help="alternating blocks per variant")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of each block")
    parser.add_argument("--isolated", type=int, default=0, help="also time the enforcer's two passes N times each")
    opts = parser.parse_args()

    torch.manual_seed(0)
    base, model_name = minilm_classifier()
    mask = prune(base, 0.5)
    mask.apply_(base)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    n = opts.steps * opts.batch_size
    g = torch.Generator().manual_seed(0)
    data = Dataset.from_dict(
        {
            "input_ids": torch.randint(1000, 30000, (n, opts.seq_len), generator=g).tolist(),
            "attention_mask": [[1] * opts.seq_len] * n,
            "labels": torch.randint(0, 2, (n,), generator=g).tolist(),
        }
    )
    tmp = tempfile.mkdtemp()
    common = dict(
        output_dir=tmp,
        per_device_train_batch_size=opts.batch_size,
        max_steps=opts.steps,
        learning_rate=2e-5,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=10_000,
        dataloader_pin_memory=False,
    )

    def run(variant: str) -> list[float]:
        base.load_state_dict(state)
        timer = StepTimer()
        if variant == "lottery":
            args = LotteryArguments(target_sparsity=0.5, pruning_rate=0.5, **common)
            trainer = LotteryTrainer(model=base, args=args, train_dataset=data, mask=mask, callbacks=[timer])
        else:
            if variant == "torch":
                modules = dict(base.named_modules())
                for name, m in mask.items():
                    torch_prune.custom_from_mask(modules[name.rsplit(".", 1)[0]], "weight", m)
            trainer = Trainer(model=base, args=TrainingArguments(**common), train_dataset=data, callbacks=[timer])
        trainer.train()
        if variant == "torch":
            for name in mask:
                torch_prune.remove(dict(base.named_modules())[name.rsplit(".", 1)[0]], "weight")
        return timer.times[opts.warmup :]

    variants = ("plain", "lottery", "torch")
    times: dict[str, list[float]] = {v: [] for v in variants}
    for block in range(opts.blocks):
        order = variants if block % 2 == 0 else variants[::-1]
        for v in order:
            times[v] += run(v)
    med = {v: statistics.median(t) for v, t in times.items()}
    print(f"model: {model_name}; batch {opts.batch_size} x {opts.seq_len} tokens; {machine()}")
    for v in variants:
        print(
            f"{v:>8}: median step {med[v] * 1000:.1f} ms over {len(times[v])} steps, "
            f"ratio to plain {med[v] / med['plain']:.3f}"
        )
    if opts.isolated:
        isolated_cost(base, mask, opts.isolated, med["plain"])


def isolated_cost(model, mask, repeats: int, plain_step: float) -> None:
    """What enforcement adds to one step, timed alone: the gradient pass plus the weight pass, medians of `repeats`."""
    enforcer = MaskEnforcer(model, mask)
    kept = enforcer._keep
    for param, _ in kept:
        param.grad = torch.randn_like(param)

    def grads() -> None:
        for param, keep in kept:
            multiply_by_mask_(param.grad, keep)

    passes = {"gradient masking": grads, "weight reset": enforcer.zero_weights}
    seconds = {}
    for name, run_pass in passes.items():
        run_pass()  # warm-up
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            run_pass()
            timings.append(time.perf_counter() - start)
        seconds[name] = statistics.median(timings)
        print(f"{name:>17}: {seconds[name] * 1000:.2f} ms per step (median of {repeats})")
    total = sum(seconds.values())
    weights = sum(keep.numel() for _, keep in kept)
    print(
        f"enforcement alone: {total * 1000:.2f} ms per step over {weights / 1e6:.1f} M prunable weights = "
        f"{total / plain_step:.4f} of the plain step ({plain_step * 1000:.1f} ms), i.e. a ratio of "
        f"{1 + total / plain_step:.4f}"
    )


if __name__ == "__main__":
    main()
