"""Run under `torchrun --nproc_per_node 2` (gloo, CPU) by tests/test_distributed.py.

Each rank builds the tiny model from a *different* seed (so θ0 must be synchronised by hf_lottery), then:

1. runs a full LotteryTrainer lottery ("full"), recording digests of θ0, of every round's mask and of the trained
   weights on every rank, and checking at every optimizer step that pruned gradients are exactly zero;
2. runs the same lottery, interrupted in round 1 after a checkpoint ("resumed"), then resumes it with a fresh
   model and `train(resume_from_checkpoint=True)`;
3. runs a plain Trainer with LotteryCallback (gradual IMP) and with LotteryCallback(mask=ticket);

and rank 0 writes `result.json` (+ `ticket.safetensors`) under the given folder. Non-main ranks record every file
they write (audit hook) so the test can check that only the main process writes artifacts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import safetensors.torch
import torch
import torch.distributed as dist

WRITES: list[str] = []
ROOT: str = ""


def _recording(fn, arg_index):
    def wrapper(*args, **kwargs):
        target = args[arg_index] if len(args) > arg_index else None
        if isinstance(target, (str, os.PathLike)) and str(target).startswith(ROOT):
            WRITES.append(str(target))
        return fn(*args, **kwargs)

    return wrapper


if os.environ.get("RANK", "0") != "0":
    # torch.save and safetensors write from C++/Rust, out of sight of the audit hook: wrap them before
    # transformers and hf_lottery import them.
    safetensors.torch.save_file = _recording(safetensors.torch.save_file, 1)
    torch.save = _recording(torch.save, 1)

torch.set_num_threads(1)  # two processes on the machine's cores: more threads only contend (conftest sets two)
import rank_utils  # noqa: E402  (tests/scripts/)
from rank_utils import DDP_RUN, digest, exit_without_teardown, gather, model_for_rank, train_datasets  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from hf_lottery import LotteryArguments, LotteryCallback, LotteryTrainer  # noqa: E402
from hf_lottery.utils.io import save_tensors  # noqa: E402


def _audit(event: str, args: tuple) -> None:
    # Record files opened for writing / renamed into place / removed below ROOT (non-main ranks only).
    if event == "open" and len(args) >= 3:
        path, mode, flags = args[0], args[1], args[2]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        )
        if writing and isinstance(path, (str, os.PathLike)) and str(path).startswith(ROOT):
            WRITES.append(str(path))
    elif event in ("os.rename", "os.remove") and args and str(args[0]).startswith(ROOT):
        WRITES.append(f"{event}:{args[0]}")


class Probe(TrainerCallback):
    """Checks masked gradients before every optimizer step; records digests of masks and weights per round."""

    def __init__(self, get_mask, model):
        self.get_mask, self.model = get_mask, model
        self.bad_grads = 0
        self.steps = 0
        self.masks: list[str] = []
        self.weights: list[str] = []

    def on_train_begin(self, args, state, control, **kwargs):
        mask = self.get_mask()
        self.masks.append(digest(mask.to_dict()) if mask is not None else "dense")

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        mask = self.get_mask()
        self.steps += 1
        if mask is None:
            return
        params = dict(self.model.named_parameters())
        for name, keep in mask.items():
            grad = params[name].grad
            if grad is not None and bool(grad[~keep].ne(0).any()):
                self.bad_grads += 1
                return

    def on_train_end(self, args, state, control, **kwargs):
        self.weights.append(digest(dict(self.model.named_parameters())))


class Interrupt(Exception):
    pass


class InterruptAt(TrainerCallback):
    def __init__(self, trainer, round_index, step):
        self.trainer, self.round_index, self.step = trainer, round_index, step

    def on_save(self, args, state, control, **kwargs):
        if self.trainer.lottery_round == self.round_index and state.global_step >= self.step:
            raise Interrupt


def lottery_args(output_dir: str, **overrides) -> LotteryArguments:
    return rank_utils.lottery_args(output_dir, **{**DDP_RUN, **overrides})


def plain_args(out: Path, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(out / "callback"),
        per_device_train_batch_size=4,
        num_train_epochs=1,
        learning_rate=1e-3,
        save_strategy="no",
        report_to="none",
        seed=0,
        ddp_backend="gloo",
        use_cpu=True,
        average_tokens_across_devices=False,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def records(history):
    """The history without timings."""
    timing = ("_runtime", "_per_second", "_time")
    return [
        {
            **{k: r[k] for k in ("round", "sparsity", "steps", "train_loss")},
            "metrics": {k: v for k, v in r["metrics"].items() if not k.endswith(timing)},
        }
        for r in history
    ]


def main() -> None:
    global ROOT
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    out = Path(parser.parse_args().out)
    ROOT = str(out)
    train, dev = train_datasets()

    # TrainingArguments initialises the process group (gloo) from torchrun's environment.
    args_full = lottery_args(str(out / "full"))
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank != 0:
        sys.addaudithook(_audit)
    result: dict = {"world_size": world}

    # 1. Uninterrupted run.
    model = model_for_rank(rank)
    trainer = LotteryTrainer(model=model, args=args_full, train_dataset=train, eval_dataset=dev)
    probe = Probe(lambda: trainer.current_mask, model)
    trainer.add_callback(probe)
    trainer.train()
    ticket = trainer.ticket
    result["theta0"] = gather(digest(trainer._rounds.theta0))
    result["round_masks"] = gather(probe.masks)
    result["round_weights"] = gather(probe.weights)
    result["bad_grad_steps"] = gather(probe.bad_grads)
    result["optimizer_steps"] = gather(probe.steps)
    result["ticket"] = gather(digest(ticket.to_dict()))
    result["history"] = records(trainer.lottery_history)

    # 2. The same run interrupted in round 1 after a checkpoint, resumed by a fresh trainer on a fresh model.
    args_resumed = lottery_args(str(out / "resumed"))
    trainer = LotteryTrainer(model=model_for_rank(rank), args=args_resumed, train_dataset=train, eval_dataset=dev)
    trainer.add_callback(InterruptAt(trainer, round_index=1, step=2))
    try:
        trainer.train()
        result["interrupted"] = False
    except Interrupt:
        result["interrupted"] = True
    dist.barrier()
    model = model_for_rank(rank + 20)  # its weights must be ignored: θ0 and the checkpoint come from the state
    trainer = LotteryTrainer(model=model, args=args_resumed, train_dataset=train, eval_dataset=dev)
    trainer.train(resume_from_checkpoint=True)
    result["resumed_ticket"] = gather(digest(trainer.ticket.to_dict()))
    result["resumed_history"] = records(trainer.lottery_history)

    # 3. LotteryCallback in a plain Trainer: gradual IMP (a level every step) ...
    model = model_for_rank(0)
    callback = LotteryCallback(lottery_args(str(out / "callback"), target_sparsity=0.2, pruning_interval_steps=1))
    plain = Trainer(model=model, args=plain_args(out), train_dataset=train, callbacks=[callback])
    cb_probe = Probe(lambda: callback.ticket, model)
    plain.add_callback(cb_probe)
    plain.train()
    result["callback_mask"] = gather(digest(callback.ticket.to_dict()))
    result["callback_sparsity"] = callback.ticket.sparsity
    result["callback_bad_grad_steps"] = gather(cb_probe.bad_grads)

    # ... and sparse fine-tuning of the ticket, with gradient accumulation (DDP's no_sync micro-batches).
    model = model_for_rank(0)
    ticket.apply_(model)
    fixed = LotteryCallback(lottery_args(str(out / "callback")), mask=ticket)
    plain = Trainer(
        model=model, args=plain_args(out, gradient_accumulation_steps=2), train_dataset=train, callbacks=[fixed]
    )
    fixed_probe = Probe(lambda: ticket, model)
    plain.add_callback(fixed_probe)
    plain.train()
    zeros_kept = all(bool(p[~ticket[n]].eq(0).all()) for n, p in model.named_parameters() if n in ticket)
    result["fixed_zeros_kept"] = gather(zeros_kept)
    result["fixed_bad_grad_steps"] = gather(fixed_probe.bad_grads)
    result["fixed_optimizer_steps"] = gather(fixed_probe.steps)
    result["fixed_weights"] = gather(digest(dict(model.named_parameters())))

    # 4. Distillation (logits and hidden states) from the round-0 dense model: every rank holds the same teacher
    # and the same rounds.
    model = model_for_rank(rank)
    kd_args = lottery_args(str(out / "distilled"), distill_alpha=0.5, distill_hidden_weight=1.0)
    trainer = LotteryTrainer(model=model, args=kd_args, train_dataset=train)
    kd_probe = Probe(lambda: trainer.current_mask, model)
    trainer.add_callback(kd_probe)
    trainer.train()
    result["distill_teacher"] = gather(digest(dict(trainer._distiller.teacher.named_parameters())))
    result["distill_round_weights"] = gather(kd_probe.weights)
    result["distill_bad_grad_steps"] = gather(kd_probe.bad_grads)
    result["distill_history"] = records(trainer.lottery_history)

    dist.barrier()
    result["non_main_writes"] = gather(sorted(set(WRITES)))
    if rank == 0:
        save_tensors(out / "ticket.safetensors", ticket.to_dict())
        (out / "result.json").write_text(json.dumps(result, indent=1))
    dist.barrier()


if __name__ == "__main__":
    try:
        main()
    finally:
        # A gloo group left alive at interpreter exit can abort a rank ("terminate called without an active
        # exception") after every result is written.
        if dist.is_initialized():
            dist.destroy_process_group()
    exit_without_teardown()
