"""What the torchrun scripts (ddp_lottery.py, fsdp_lottery.py) and the tests reading their reports share.

Importing it has no side effect: the scripts' process-wide patches stay in the scripts, so a test can rebuild the
scripts' settings here without importing them.
"""

from __future__ import annotations

import hashlib
import os
import sys

import torch
import torch.distributed as dist

from hf_lottery import LotteryArguments, LotteryTrainer, TicketMask
from hf_lottery.testing_utils import tiny_causal_lm, tiny_model, toy_dataset, toy_text_dataset

FSDP_CONFIG = {"version": 2, "transformer_layer_cls_to_wrap": ["BertLayer"], "state_dict_type": "FULL_STATE_DICT"}

# Each script's lottery, on top of the settings both share (`lottery_args`).
DDP_RUN = dict(target_sparsity=0.1, pruning_rate=0.1, save_strategy="steps", save_steps=2)  # rounds at 0 and 10 %
FSDP_RUN = dict(target_sparsity=0.4, pruning_rate=0.2, save_strategy="no", fsdp=True, fsdp_config=FSDP_CONFIG)
# The decoders run under FSDP too, each sharded by its own block class.
DECODER_BLOCKS = {"llama": "LlamaDecoderLayer", "qwen2": "Qwen2DecoderLayer", "gpt2": "GPT2Block"}
# The same run in one process: one process's batch is the two ranks' together.
SINGLE_PROCESS = dict(per_device_train_batch_size=8, ddp_backend=None, fsdp=None, fsdp_config=None)


def digest(tensors) -> str:
    """A short hash of named tensors' names, shapes and bytes (equal digests: bit-identical tensors)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return h.hexdigest()[:16]


def gather(value) -> list:
    """`value` from every rank, in rank order."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def model_for_rank(rank: int, family: str = "bert"):
    # A different initialisation on each rank: hf_lottery must take θ0 from the main process.
    if family == "gpt2":  # without dropout, whose draws differ between one process and two
        return tiny_causal_lm(family, seed=rank, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    if family in DECODER_BLOCKS:
        return tiny_causal_lm(family, seed=rank)
    return tiny_model(seed=rank, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def fsdp_decoder_run(family: str) -> dict:
    """`FSDP_RUN` for a tiny causal LM of `family`, sharded block by block."""
    return {**FSDP_RUN, "fsdp_config": {**FSDP_CONFIG, "transformer_layer_cls_to_wrap": [DECODER_BLOCKS[family]]}}


def lottery_args(output_dir: str, **overrides) -> LotteryArguments:
    values = dict(
        output_dir=output_dir,
        per_device_train_batch_size=4,  # x 2 processes = the single-process run's 8
        num_train_epochs=1,
        learning_rate=1e-3,
        logging_steps=2,
        eval_strategy="no",
        report_to="none",
        seed=0,
        ddp_backend="gloo",
        use_cpu=True,  # without it the Trainer shards the data but does not wrap the model in DDP on a CPU machine
        # transformers 5 otherwise scales the loss by the number of processes for models taking **kwargs (BERT),
        # which doubles the reported losses and, for a loss that ignores num_items_in_batch, the gradients.
        average_tokens_across_devices=False,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    values.update(overrides)
    return LotteryArguments(**values)


def train_datasets(family: str = "bert"):
    """The toy train and dev sets every run of `family` uses (the decoders' runs have no dev set)."""
    if family in DECODER_BLOCKS:
        return toy_text_dataset(32, seed=0), None
    return toy_dataset(32, seed=0), toy_dataset(16, seed=1)


def single_process_run(output_dir: str, run: dict, family: str = "bert") -> LotteryTrainer:
    """A script's lottery (`DDP_RUN`, `FSDP_RUN`, `fsdp_decoder_run(...)`) trained in this process, on rank 0's
    model."""
    train, dev = train_datasets(family)
    args = lottery_args(output_dir, **{**run, **SINGLE_PROCESS})
    trainer = LotteryTrainer(model=model_for_rank(0, family), args=args, train_dataset=train, eval_dataset=dev)
    trainer.train()
    return trainer


def agreement(a: TicketMask, b: TicketMask) -> float:
    """The fraction of prunable weights two tickets keep or prune alike."""
    return sum(int((a[n] == b[n]).sum()) for n in b) / b.num_params


def assert_same_ticket(single: TicketMask, sharded: TicketMask) -> None:
    """A ticket found by one process and one found by two: same sparsity, and ≥ 99 % of the weights kept or pruned
    alike (the two runs sum gradients in different orders)."""
    assert abs(single.sparsity - sharded.sparsity) <= 1e-12
    assert agreement(single, sharded) >= 0.99


def exit_without_teardown() -> None:
    """Leave a torchrun script once every result is written and the process group destroyed: gloo's background
    threads can abort a rank at interpreter teardown ("terminate called without an active exception")."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
