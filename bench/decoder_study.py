"""A decoder study: an IMP ticket against Wanda and magnitude one-shot pruning, at 50 % and 2:4, after equal retraining.

No real small decoder installs offline (no PyPI package ships one), so the decoder is trained from scratch here, on
real text the project has: the GLUE sentences of `../shared/glue` (train splits of SST-2, MRPC, CoLA, RTE, STS-B and
WNLI, plus QNLI's dev split, which has no train split here) with a BPE vocabulary trained on them; the dev text is
the dev splits of SST-2, MRPC, CoLA, RTE and STS-B (no sentence shared with the training text). The model is a small
Llama (grouped-query attention, tied embeddings; `--hidden`, `--layers`, ...). Stages, each resumable (its output
folder is its checkpoint):

  tokenizer  - a byte-level BPE of `--vocab` tokens on the training text
  dense      - the decoder trained from scratch for `--pretrain-steps` (the "pre-trained" model of the study)
  arms       - from the dense weights, each arm retrains `--retrain-steps` with its mask enforced:
               dense (no mask), magnitude and Wanda one-shot at 50 % (global / per output row, Wanda's groups) and at
               2:4, and IMP tickets (magnitude, 20 % of the weights per round, rewound to the dense weights every
               round, final round = the same `--retrain-steps`) at 50 % and at 2:4 (rounds nest inside the 2:4 mask)
Every arm's dev perplexity goes to `--output` (JSON), with the machine, the load and the seconds.

    OMP_NUM_THREADS=1 python bench/decoder_study.py --cache bench/_cache/decoder_study --output bench/decoder_study.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from _common import machine
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

from glue_tasks import get_task, load_glue
from hf_lottery import LotteryArguments, LotteryTrainer, prune
from hf_lottery.deploy.speed import load_average
from hf_lottery.training.causal_lm import text_blocks, with_perplexity
from hf_lottery.training.enforcement import MaskEnforcerCallback

# GLUE task -> split whose sentences the study reads (`glue_tasks.load_glue` names).
TRAIN_SPLITS = {
    "sst2": "train",
    "mrpc": "train",
    "cola": "train",
    "rte": "train",
    "stsb": "train",
    "wnli": "train",
    "qnli": "validation",
}
DEV_SPLITS = {
    "sst2": "validation",
    "mrpc": "validation",
    "cola": "validation",
    "rte": "validation",
    "stsb": "validation",
}
ARMS = ("dense", "magnitude-50", "wanda-50", "magnitude-2:4", "wanda-2:4", "imp-50", "imp-2:4")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--glue-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "glue"))
    p.add_argument("--cache", type=Path, default=Path("bench/_cache/decoder_study"))
    p.add_argument("--output", type=Path, default=Path("bench/decoder_study.json"))
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=352)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--pretrain-steps", type=int, default=2000)
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--retrain-steps", type=int, default=300)
    p.add_argument("--retrain-lr", type=float, default=3e-4)
    p.add_argument("--calibration-batches", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def read_sentences(glue_dir: str, splits: dict[str, str]) -> list[str]:
    """The text columns of each task's split, row by row, in file order, without duplicates."""
    texts: list[str] = []
    for name, split in splits.items():
        task = get_task(name)
        data = load_glue(task, glue_dir, splits=split)[split]
        for row in zip(*(data[column] for column in task.text_columns)):
            texts += row
    return list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))


def build_tokenizer(folder: Path, texts: list[str], vocab: int) -> PreTrainedTokenizerFast:
    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(folder)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<eos>")
    wrapped.save_pretrained(folder)
    return wrapped


def training_args(out: Path, args: argparse.Namespace, steps: int, lr: float, cls=TrainingArguments, **extra):
    return cls(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=args.batch,
        per_device_eval_batch_size=64,
        learning_rate=lr,
        warmup_steps=0.05,
        lr_scheduler_type="cosine",
        weight_decay=0.01,
        logging_steps=50,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=True,
        dataloader_num_workers=0,
        **extra,
    )


def perplexity(trainer: Trainer, dev) -> float:
    return with_perplexity(trainer.evaluate(dev))["eval_perplexity"]


def pretrain(args, tokenizer, train) -> Path:
    folder = args.cache / "dense"
    if (folder / "model.safetensors").is_file():
        return folder
    torch.manual_seed(args.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.block,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    trainer = Trainer(
        model=model,
        args=training_args(args.cache / "dense-run", args, args.pretrain_steps, args.pretrain_lr),
        train_dataset=train,
    )
    trainer.train()
    trainer.save_model(str(folder))
    return folder


def calibration(train, args) -> list[dict[str, torch.Tensor]]:
    rows = train.select(range(args.calibration_batches * 8)).with_format("torch")
    return [
        {"input_ids": rows[i : i + 8]["input_ids"], "attention_mask": rows[i : i + 8]["attention_mask"]}
        for i in range(0, len(rows), 8)
    ]


def run_arm(arm: str, args, dense_dir: Path, train, dev) -> dict:
    out = args.cache / arm.replace(":", "-")
    result_file = out / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    start, load = time.time(), load_average()
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM.from_pretrained(dense_dir)
    scope = "2:4" if arm.endswith("2:4") else "global"
    if arm.startswith("imp"):
        largs = training_args(
            out,
            args,
            args.retrain_steps,
            args.retrain_lr,
            cls=LotteryArguments,
            target_sparsity=0.5,
            pruning_rate=0.2,
            pruning_method="magnitude",
            pruning_scope=scope,
            rewind="pretrained",
        )
        trainer = LotteryTrainer(model=model, args=largs, train_dataset=train)
        trainer.train()
        history = [{"sparsity": r["sparsity"], "total_steps": r.get("total_steps")} for r in trainer.lottery_history]
        sparsity = history[-1]["sparsity"]
    else:
        callbacks = []
        sparsity = 0.0
        if arm != "dense":
            method = arm.split("-")[0]
            kwargs = {"dataloader": calibration(train, args)} if method == "wanda" else {}
            mask = prune(
                model, 0.5, method=method, scope="row" if method == "wanda" and scope == "global" else scope, **kwargs
            )
            mask.apply_(model)
            sparsity = mask.sparsity
            callbacks.append(MaskEnforcerCallback(mask))
        trainer = Trainer(
            model=model,
            args=training_args(out, args, args.retrain_steps, args.retrain_lr),
            train_dataset=train,
            callbacks=callbacks,
        )
        trainer.train()
        history = None
    record = {
        "arm": arm,
        "dev_perplexity": perplexity(trainer, dev),
        "sparsity": float(sparsity),
        "retrain_steps": args.retrain_steps,
        "history": history,
        "seconds": time.time() - start,
        "load_average_before": load,
        "machine": machine(),
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = result_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    tmp.replace(result_file)
    return record


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    train_texts = read_sentences(args.glue_dir, TRAIN_SPLITS)
    dev_texts = read_sentences(args.glue_dir, DEV_SPLITS)
    dev_texts = [t for t in dev_texts if t not in set(train_texts)]
    tokenizer = build_tokenizer(args.cache / "tokenizer", train_texts, args.vocab)
    train = text_blocks(train_texts, tokenizer, args.block).shuffle(seed=args.seed)
    dev = text_blocks(dev_texts, tokenizer, args.block)
    print(f"[decoder_study] {len(train)} train / {len(dev)} dev blocks of {args.block} tokens", flush=True)
    dense_dir = pretrain(args, tokenizer, train)
    results = {}
    for arm in args.arms:
        print(f"[decoder_study] arm {arm}", flush=True)
        results[arm] = run_arm(arm, args, dense_dir, train, dev)
        print(f"[decoder_study] {arm}: dev perplexity {results[arm]['dev_perplexity']:.2f}", flush=True)
    summary = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "train_blocks": len(train),
        "dev_blocks": len(dev),
        "threads": int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())),
        "results": results,
    }
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    tmp.replace(args.output)


if __name__ == "__main__":
    main()
