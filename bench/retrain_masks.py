"""Retrain given masks under other training seeds: is a ticket's score its mask's, or its training run's?

Each `--mask LABEL=FILE` (a mask saved by a search, `search/mask.safetensors`, or a lottery state's
`mask_round_N.safetensors`) is trained as a ticket from θ0 — all-MiniLM-L6-v2, not BERT-base — under every
`--train-seeds` value, with `bench/early_bird.py`'s `train_ticket` (one round, the task's
budget, the seed fixing the new head's initialisation, dropout and the data order). When masks of the same search
differ by several points in one training run but overlap across training seeds, the difference was the training
run's; when the order holds across seeds, the masks differ. Every (mask, seed) run keeps its lottery state under
`--cache` (stop and run again to continue); split `--masks` or `--train-seeds` between processes, one per core.

    OMP_NUM_THREADS=1 python bench/retrain_masks.py --task mrpc --epochs 3 --train-seeds 1044 2044 \
        --mask imp=_cache/early_bird_r10/mrpc/full-60-seed2/lottery_state/mask_round_4.safetensors
    python bench/retrain_masks.py --task mrpc --epochs 3 --train-seeds 1044 2044 --mask imp=... --report \
        --output retrained_masks.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _common import machine
from early_bird import train_ticket
from quality import add_budget_arguments, build

from hf_lottery import TicketMask
from hf_lottery.utils.io import load_tensors, write_json

RESULT = "result.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_arguments(p, task="mrpc", epochs=3)
    p.add_argument("--rate", type=float, default=0.1, help="pruning_rate recorded in the ticket's arguments")
    p.add_argument("--sampling", default="group_by_length")
    p.add_argument("--mask", action="append", required=True, help="LABEL=FILE, repeatable")
    p.add_argument("--train-seeds", type=int, nargs="+", required=True)
    p.add_argument("--cache", default=str(Path(__file__).with_name("_cache") / "retrain_masks"))
    p.add_argument("--report", action="store_true", help="only write the table from the cache")
    p.add_argument("--output", default=None, help="with --report: the results JSON")
    return p.parse_args(argv)


def masks(opts: argparse.Namespace) -> dict[str, Path]:
    out = {}
    for item in opts.mask:
        label, sep, file = item.partition("=")
        if not sep or not label or not file:
            raise SystemExit(f"--mask takes LABEL=FILE, got {item!r}")
        out[label] = Path(file)
    return out


def run_dir(opts: argparse.Namespace, label: str, seed: int) -> Path:
    return Path(opts.cache) / opts.task / f"{label}-train{seed}"


def study(opts: argparse.Namespace) -> None:
    parts = build(opts.task, opts.glue_dir, opts.train_samples, opts.max_len)
    for label, file in masks(opts).items():
        mask = TicketMask(load_tensors(file))
        for seed in opts.train_seeds:
            out = run_dir(opts, label, seed)
            if (out / RESULT).is_file():
                continue
            print(f"[retrain_masks] {opts.task} {label} ({mask.sparsity:.1%}) training seed {seed}", flush=True)
            history = train_ticket(opts, out, mask, seed, parts)
            write_json(out / RESULT, {"machine": machine(), "mask": str(file), "history": history})


def report(opts: argparse.Namespace) -> dict:
    metric = "eval_accuracy"
    rows = {}
    for label, file in masks(opts).items():
        scores = {}
        for seed in opts.train_seeds:
            path = run_dir(opts, label, seed) / RESULT
            if path.is_file():
                last = json.loads(path.read_text(encoding="utf-8"))["history"][-1]
                scores[seed] = {"metric": last["metrics"][metric], "seconds": last.get("seconds")}
        values = [100 * s["metric"] for s in scores.values()]
        rows[label] = {
            "mask": str(file),
            "runs": {str(k): v for k, v in scores.items()},
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None,
        }
    header = " | ".join(f"seed {s}" for s in opts.train_seeds)
    print(f"| mask | {header} | mean ± std |\n|---|" + "---:|" * (len(opts.train_seeds) + 1))
    for label, row in rows.items():
        cells = " | ".join(
            f"{100 * row['runs'][str(s)]['metric']:.2f}" if str(s) in row["runs"] else "–" for s in opts.train_seeds
        )
        spread = f"{row['mean']:.2f} ± {row['std']:.2f}" if row["std"] is not None else "–"
        print(f"| {label} | {cells} | {spread} |")
    return {"task": opts.task, "metric": metric, "train_seeds": opts.train_seeds, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    if opts.report:
        result = report(opts)
        if opts.output:
            write_json(Path(opts.output), result)
        return
    study(opts)


if __name__ == "__main__":
    main()
