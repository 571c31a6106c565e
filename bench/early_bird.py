"""Early-bird rounds against full IMP: the same ticket for a fraction of the optimizer steps?

For one GLUE task on all-MiniLM-L6-v2 (not BERT-base) and each seed:
  full        - IMP, every round trained to the end, to the largest `--targets` level (its rounds at the
                smaller levels are the full-IMP points there)
  early-bird  - one run per level in `--targets`: every round but the last stops once consecutive masks differ by
                less than `--threshold` for `--patience` checks every `--interval` steps (round 0 as well unless
                `--full-round0`); the last round, the ticket, trains to the end
  gradual     - one run per level: the mask is found inside one training run by `LotteryCallback` (gradual IMP
                without rewinding: `--gradual-rate` of the original weights pruned every `--gradual-interval`
                steps, the weights training on between levels, one linear learning-rate decay over the run); the
                ticket then trains from θ0 under that mask, as full IMP's last round does
                (`--gradual-interval 0`: the control without search, θ0's own magnitude mask)
  hydra       - one run per level: round 0 trains `--hydra-warm-steps` steps only, then HYDRA learns the mask on
                those weights for `--hydra-epochs` passes over the training data (scores trained, weights frozen;
                these steps count as the search's too), one shot to the level; the ticket then trains from θ0
                under that mask, as for gradual
  hydra-trainer - the hydra run as one `LotteryTrainer`: `search_round_steps=--hydra-warm-steps`,
                `pruning_method="hydra"`, `hydra_epochs=--hydra-epochs`, `pruning_rate` = the level (one round
                after round 0); the mask's cost is round 0's steps plus the batches HYDRA read (`next_mask`)
Both rewind the same way (`--rewind`, default θ0: the ticket is then judged by its mask alone). A level's *cost* is
the optimizer steps spent before its final round (what finding the mask took: `total_steps` of the round before)
and the total with the final round; the table compares the early-bird ticket's dev metric and cost to full IMP's
at the same level and seed. The data are the subsample of `bench/quality.py` (same build), so full IMP here repeats
that study's runs at the same seed, budget and rewinding.

Every run keeps its lottery state under `--cache`: stop and run again to continue (an early-bird round resumes
where it stopped). One process per core: split the seeds (`--seeds`) or the runs (`--runs`) between processes.

    OMP_NUM_THREADS=1 python bench/early_bird.py --task sst2 --train-samples 8000 --epochs 2 --seeds 0 --runs full &
    OMP_NUM_THREADS=1 python bench/early_bird.py --task sst2 --train-samples 8000 --epochs 2 --seeds 0 \
        --runs early-bird; wait
    python bench/early_bird.py --task sst2 --train-samples 8000 --epochs 2 --report
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from _common import machine
from mask_overlap import pruned_overlap
from quality import add_budget_arguments, build, lottery_args, run_trainer, seeded_model
from transformers import Trainer

from hf_lottery import LotteryCallback, TicketMask, prune
from hf_lottery.training.schedule import sparsity_schedule
from hf_lottery.utils.io import load_tensors, save_tensors, write_json

RUNS = ("full", "early-bird", "gradual", "hydra", "hydra-trainer")
SEARCHES = ("hydra", "gradual")  # --report compares the first of these (or hydra-trainer) in --runs to full IMP,
# else early-bird


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_budget_arguments(p)
    p.add_argument("--targets", type=float, nargs="+", default=[0.4, 0.6])
    p.add_argument("--rate", type=float, default=0.2, help="fraction of the original weights pruned per round")
    p.add_argument(
        "--eb-rate",
        type=float,
        default=None,
        help="per-round rate of the early-bird runs only (default --rate); e.g. the level itself: one early round, "
        "then the ticket",
    )
    p.add_argument("--rewind", default="pretrained", help="rewind mode of both runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    p.add_argument("--interval", type=int, default=25, help="early_bird_interval_steps (a folder per setting)")
    p.add_argument("--threshold", type=float, default=0.01, help="early_bird_threshold (a folder per setting)")
    p.add_argument("--patience", type=int, default=3, help="early_bird_patience (a folder per setting)")
    p.add_argument("--full-round0", action="store_true", help="train round 0 to the end in the early-bird runs")
    p.add_argument(
        "--gradual-interval",
        type=int,
        default=100,
        help="gradual runs: optimizer steps per level; 0 is the control without search (θ0's magnitude mask)",
    )
    p.add_argument("--gradual-rate", type=float, default=0.1, help="gradual runs: original weights pruned per level")
    p.add_argument(
        "--full-json",
        default=None,
        help="with --report: take the full-IMP rows (seed, level) from this committed report JSON; the rows it lacks "
        "come from the cache (--full-cache)",
    )
    p.add_argument(
        "--rows-json",
        default=None,
        help="with --report: a committed report JSON of the same runs; a seed whose runs the cache no longer holds "
        "takes its rows (full IMP and the candidate) from it",
    )
    p.add_argument(
        "--hydra-warm-steps", type=int, default=115, help="hydra runs: optimizer steps of round 0 before the scores"
    )
    p.add_argument("--hydra-epochs", type=int, default=2, help="hydra runs: passes over the data learning the scores")
    p.add_argument(
        "--pruning-seed-offset",
        type=int,
        default=None,
        help="hydra-trainer runs: pruning_seed = the run's seed + this (another draw of HYDRA's dropout, round 0 "
        "unchanged; a folder per offset)",
    )
    p.add_argument("--sampling", default="group_by_length")
    p.add_argument("--cache", default=str(Path(__file__).with_name("_cache") / "early_bird"))
    p.add_argument("--report", action="store_true", help="only write the table from the cache")
    p.add_argument(
        "--full-cache",
        default=None,
        help="with --report: read the full-IMP runs from this cache instead (another --rate, e.g. 0.1 per round)",
    )
    p.add_argument(
        "--full-target",
        type=float,
        default=None,
        help="with --report: the level the full-IMP runs went to (default the largest --targets)",
    )
    p.add_argument("--output", default=None, help="results JSON (default with --report: bench/early_bird_<task>.json)")
    opts = p.parse_args(argv)
    if opts.eb_rate is None:
        opts.eb_rate = opts.rate
    return opts


# The early-bird settings a run's folder is named after when they differ from these (the first runs' defaults).
EARLY_BIRD_DEFAULTS = {"interval": 25, "threshold": 0.01, "patience": 3, "full_round0": False, "eb_rate": 0.2}
FOLDER_LABELS = {"full_round0": "fullround0", "eb_rate": "rate"}


def run_dir(opts: argparse.Namespace, run: str, seed: int, target: float) -> Path:
    name = run
    if run == "gradual":
        name = "theta0-magnitude" if opts.gradual_interval == 0 else f"{name}-every{opts.gradual_interval}"
        name += f"-rate{opts.gradual_rate:g}"
    if run in ("hydra", "hydra-trainer"):
        name += f"-warm{opts.hydra_warm_steps}-epochs{opts.hydra_epochs}"
    if run == "hydra-trainer" and opts.pruning_seed_offset is not None:
        name += f"-pseed{opts.pruning_seed_offset}"
    if run == "early-bird":
        for key, default in EARLY_BIRD_DEFAULTS.items():
            value, label = getattr(opts, key), FOLDER_LABELS.get(key, key)
            if value != default:
                name += f"-{label}" if isinstance(value, bool) else f"-{label}{value:g}"
    return Path(opts.cache) / opts.task / f"{name}-{int(round(100 * target))}-seed{seed}"


def quality_opts(opts: argparse.Namespace, target: float, rate: float) -> argparse.Namespace:
    """The option names `bench/quality.py`'s `lottery_args` reads."""
    return argparse.Namespace(lr=opts.lr, epochs=opts.epochs, target=target, rate=rate, sampling=opts.sampling)


def history_path(folder: Path) -> Path:
    return folder / "history.json"


def study(opts: argparse.Namespace) -> None:
    parts = build(opts.task, opts.glue_dir, opts.train_samples, opts.max_len)
    for seed in opts.seeds:
        jobs = []
        if "full" in opts.runs:
            jobs.append(("full", max(opts.targets), {}))
        if "early-bird" in opts.runs:
            eb = dict(
                early_bird_interval_steps=opts.interval,
                early_bird_threshold=opts.threshold,
                early_bird_patience=opts.patience,
                early_bird_round0=not opts.full_round0,
            )
            jobs += [("early-bird", target, eb) for target in sorted(opts.targets)]
        for run in SEARCHES:
            if run in opts.runs:
                jobs += [(run, target, {}) for target in sorted(opts.targets)]
        if "hydra-trainer" in opts.runs:  # the HYDRA search as one LotteryTrainer (search_round_steps)
            hydra = dict(
                pruning_method="hydra", hydra_epochs=opts.hydra_epochs, search_round_steps=opts.hydra_warm_steps
            )
            if opts.pruning_seed_offset is not None:
                hydra["pruning_seed"] = 42 + seed + opts.pruning_seed_offset
            jobs += [("hydra-trainer", target, hydra) for target in sorted(opts.targets)]
        for run, target, extra in jobs:
            out = run_dir(opts, run, seed, target)
            if history_path(out).is_file():
                continue
            print(f"[early_bird] {opts.task} {run} to {target:.0%} seed {seed}", flush=True)
            if run in SEARCHES:
                searched(opts, run, out, seed, target, parts)
                continue
            rate = {"full": opts.rate, "hydra-trainer": target}.get(run, opts.eb_rate)
            largs = lottery_args(out, quality_opts(opts, target, rate), 42 + seed, rewind=opts.rewind, **extra)
            history = run_trainer(out, largs, parts)
            tmp = history_path(out).with_suffix(".tmp")
            tmp.write_text(json.dumps({"machine": machine(), "history": history}, indent=1), encoding="utf-8")
            tmp.replace(history_path(out))


SEARCH_MASK = "mask.safetensors"


def searched(opts: argparse.Namespace, run: str, out: Path, seed: int, target: float, parts) -> None:
    """Find the mask (`gradual_mask` or `hydra_mask`), then train the ticket from θ0 under it. A search resumes from
    its saved mask (a stopped search restarts); the ticket's run resumes from its own lottery state."""
    search_dir, ticket_dir = out / "search", out / "ticket"
    mask_file = search_dir / SEARCH_MASK
    seed_value = 42 + seed
    if not mask_file.is_file():
        find = gradual_mask if run == "gradual" else hydra_mask
        ticket, search = find(opts, search_dir, seed_value, target, parts)
        write_json(search_dir / "search.json", {**search, "sparsity": ticket.sparsity})
        save_tensors(mask_file, ticket.to_dict())  # last: its presence says the search is done
    mask = TicketMask(load_tensors(mask_file))
    search = json.loads((search_dir / "search.json").read_text())
    history = train_ticket(opts, ticket_dir, mask, seed_value, parts)
    steps_to_mask = search.get("steps_to_mask")
    if steps_to_mask is None:  # searches recorded before the field: gradual's levels × interval
        steps_to_mask = (len(sparsity_schedule(target, opts.gradual_rate)) - 1) * opts.gradual_interval
    result = {
        "machine": machine(),
        "steps_to_mask": steps_to_mask,
        "search_seconds": search.get("seconds", sum(r.get("seconds", 0.0) for r in search["history"])),
        "search": search["history"],
        "history": history,
    }
    write_json(history_path(out), result)


def train_ticket(opts: argparse.Namespace, out: Path, mask: TicketMask, seed: int, parts) -> list[dict]:
    """Train θ0 under `mask` as full IMP's last round (one round at the mask's sparsity); resumes from `out`."""
    largs = lottery_args(
        out, quality_opts(opts, mask.sparsity, opts.rate), seed, target_sparsity=round(mask.sparsity, 10)
    )
    return run_trainer(out, largs, parts, mask=mask)


def gradual_mask(opts: argparse.Namespace, out: Path, seed: int, target: float, parts) -> tuple[TicketMask, dict]:
    """The gradual search's mask (`gradual_search`); `--gradual-interval 0` is the control without search, θ0's own
    magnitude mask. The search run has `levels * --gradual-interval + 1` optimizer steps: the last level is pruned
    as the final step begins, so the mask costs `levels * --gradual-interval` steps."""
    _, data, model_init, collator, _ = parts
    model = seeded_model(model_init, seed)
    if opts.gradual_interval == 0:
        return prune(model, target), {"history": [], "steps_to_mask": 0}
    ticket, history, _ = gradual_search(model, out, opts, seed, target, opts.gradual_interval, data, collator)
    steps = (len(sparsity_schedule(target, opts.gradual_rate)) - 1) * opts.gradual_interval
    return ticket, {"history": history, "steps_to_mask": steps}


def hydra_mask(opts: argparse.Namespace, out: Path, seed: int, target: float, parts) -> tuple[TicketMask, dict]:
    """Train round 0 for `--hydra-warm-steps` steps (the learning-rate schedule of a round that long), then learn
    HYDRA scores on those weights for `--hydra-epochs` passes and prune once to `target`. Every score step is a
    forward and backward pass over a batch, so the mask costs the warm steps plus the score steps."""
    _, data, model_init, collator, _ = parts
    started = time.time()
    model = seeded_model(model_init, seed)
    largs = lottery_args(out, quality_opts(opts, target, opts.rate), seed, max_steps=opts.hydra_warm_steps)
    trainer = Trainer(model=model, args=largs, train_dataset=data["train"], data_collator=collator)
    trainer.train()
    batches = trainer.get_train_dataloader()
    ticket = prune(model, target, method="hydra", dataloader=batches, epochs=opts.hydra_epochs, seed=seed)
    search = {
        "history": [],
        "warm_steps": opts.hydra_warm_steps,
        "score_steps": opts.hydra_epochs * len(batches),
        "steps_to_mask": opts.hydra_warm_steps + opts.hydra_epochs * len(batches),
        "seconds": round(time.time() - started, 1),
        "load_average": os.getloadavg()[0],
    }
    return ticket, search


def gradual_search(
    model, out: Path, opts: argparse.Namespace, seed: int, target: float, interval: int, data, collator, evaluate=False
) -> tuple[TicketMask, list[dict], Trainer]:
    """Prune `model` gradually inside one training run on `data["train"]`: `LotteryCallback` without rewinding takes
    `opts.gradual_rate` of the original weights every `interval` optimizer steps and the last level as the final step
    begins (`levels * interval + 1` steps, one linear learning-rate decay). With `evaluate` each level is evaluated
    on `data["validation"]` before it is pruned. Returns the mask, the levels' history and the trainer."""
    levels = len(sparsity_schedule(target, opts.gradual_rate)) - 1
    largs = lottery_args(
        out,
        quality_opts(opts, target, opts.gradual_rate),
        seed,
        rewind="none",
        pruning_interval_steps=interval,
        max_steps=levels * interval + 1,
    )
    callback = LotteryCallback(largs)
    trainer = Trainer(
        model=model,
        args=largs,
        train_dataset=data["train"],
        eval_dataset=data["validation"] if evaluate else None,
        data_collator=collator,
        callbacks=[callback],
    )
    trainer.train()
    assert callback.ticket is not None and abs(callback.ticket.sparsity - target) < 0.01, callback.ticket
    return callback.ticket, callback.history, trainer


def gradual_record(result: dict, target: float, metric: str) -> dict | None:
    """`level_record`'s fields for a searched run (gradual, hydra): the ticket's metric, the search's steps."""
    ticket = result["history"][-1]
    if abs(ticket["sparsity"] - target) > 0.01:
        return None
    return {
        "metric": ticket["metrics"].get(metric),
        "steps_to_mask": result["steps_to_mask"],
        "total_steps": result["steps_to_mask"] + ticket["total_steps"],
        "seconds": result["search_seconds"] + sum(r.get("seconds", 0.0) for r in result["history"]),
        "stopped_at": [],
    }


def trainer_search_record(history: list[dict], target: float, metric: str) -> dict | None:
    """`level_record`'s fields for a `hydra-trainer` run (round 0 of `search_round_steps`, HYDRA's mask, the
    ticket): the mask costs round 0's optimizer steps and the batches HYDRA's scores read (`next_mask`)."""
    if len(history) != 2 or abs(history[-1]["sparsity"] - target) > 0.01:
        return None
    search, ticket = history
    steps_to_mask = search["steps"] + search["next_mask"]["scoring_batches"]
    return {
        "metric": ticket["metrics"].get(metric),
        "steps_to_mask": steps_to_mask,
        "total_steps": steps_to_mask + ticket["steps"],
        "seconds": sum(r["seconds"] for r in history) + search["next_mask"]["seconds"],
        "stopped_at": [],
    }


def theta0_overlap(model_init, out: Path, seed: int) -> float:
    """The fraction of the searched mask's pruned weights that global magnitude pruning of θ0 (`model_init`, the
    run's own, seeded as it was) prunes too: the measure of `bench/mask_overlap.py`."""
    mask = TicketMask(load_tensors(out / "search" / SEARCH_MASK))
    return pruned_overlap(prune(seeded_model(model_init, 42 + seed), mask.sparsity), mask)


def level_record(history: list[dict], target: float, metric: str) -> dict | None:
    """The round of `history` at `target` sparsity: its metric, steps before it and total steps to its end."""
    for i, record in enumerate(history):
        if abs(record["target_sparsity"] - target) < 1e-6:
            before = history[i - 1]["total_steps"] if i else 0
            return {
                "metric": record["metrics"].get(metric),
                "steps_to_mask": before,
                "total_steps": record["total_steps"],
                "seconds": sum(r.get("seconds", 0.0) for r in history[: i + 1]),
                "stopped_at": [(r.get("early_bird") or {}).get("stopped_at_step") for r in history[:i]],
            }
    return None


def committed_rows(path: str | None) -> dict[tuple[int, float], dict]:
    """The rows of a committed report JSON by (seed, level); none without `path`."""
    rows = json.loads(Path(path).read_text())["rows"] if path else []
    return {(row["seed"], round(row["target"], 6)): row for row in rows}


def report(opts: argparse.Namespace) -> dict:
    """The table of the candidate runs (hydra or gradual if `--runs` names it, else early-bird) against full IMP."""
    metric = "eval_accuracy"
    candidate = next((run for run in (*SEARCHES, "hydra-trainer") if run in opts.runs), "early-bird")
    key = candidate.replace("-", "_")
    rows = []
    full_opts = argparse.Namespace(**{**vars(opts), "cache": opts.full_cache or opts.cache})
    full_target = opts.full_target or max(opts.targets)
    full_rows, earlier_rows = committed_rows(opts.full_json), committed_rows(opts.rows_json)
    model_init = None  # built once, for the overlaps of gradual runs
    for seed in opts.seeds:
        full_file = history_path(run_dir(full_opts, "full", seed, full_target))
        full = json.loads(full_file.read_text())["history"] if full_file.is_file() else None
        for target in sorted(opts.targets):
            run_file = history_path(run_dir(opts, candidate, seed, target))
            found = json.loads(run_file.read_text()) if run_file.is_file() else None
            if found is None:
                record = None
            elif candidate in SEARCHES:
                record = gradual_record(found, target, metric)
                if record is not None:
                    model_init = model_init or build(opts.task, opts.glue_dir, opts.train_samples, opts.max_len)[2]
                    record["pruned_also_by_theta0_magnitude"] = theta0_overlap(model_init, run_file.parent, seed)
            elif candidate == "hydra-trainer":
                record = trainer_search_record(found["history"], target, metric)
            else:
                record = level_record(found["history"], target, metric)
            full_record = full_rows.get((seed, round(target, 6)), {}).get("full")
            if full_record is None and full:
                full_record = level_record(full, target, metric)
            earlier = earlier_rows.get((seed, round(target, 6)), {})
            record, full_record = record or earlier.get(key), full_record or earlier.get("full")
            rows.append({"seed": seed, "target": target, "full": full_record, key: record})
    lines = [
        f"| level | seed | full IMP {metric} | {candidate} | Δ (points) | steps to mask: full / {candidate} (ratio) | "
        f"total steps: full / {candidate} (ratio) |"
        + (" pruned also by θ0's magnitude |" if candidate in SEARCHES else ""),
        "|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if candidate in SEARCHES else ""),
    ]
    for r in rows:
        f, e = r["full"], r[key]
        if not f or not e:
            lines.append(f"| {r['target']:.0%} | {r['seed']} | {_m(f)} | {_m(e)} | – | – | – |")
            continue
        delta = 100 * (e["metric"] - f["metric"])
        lines.append(
            f"| {r['target']:.0%} | {r['seed']} | {_m(f)} | {_m(e)} | {delta:+.2f} | "
            f"{f['steps_to_mask']} / {e['steps_to_mask']} ({e['steps_to_mask'] / max(f['steps_to_mask'], 1):.2f}) | "
            f"{f['total_steps']} / {e['total_steps']} ({e['total_steps'] / f['total_steps']:.2f}) |"
            + (f" {100 * e['pruned_also_by_theta0_magnitude']:.1f} % |" if candidate in SEARCHES else "")
        )
    for target in sorted(opts.targets):
        deltas = [
            100 * (r[key]["metric"] - r["full"]["metric"])
            for r in rows
            if r["target"] == target and r["full"] and r[key]
        ]
        if len(deltas) > 1:
            lines.append(
                f"\n{target:.0%}: {candidate} − full = {statistics.mean(deltas):+.2f} ± {statistics.stdev(deltas):.2f} "
                f"points over {len(deltas)} seeds"
            )
    table = "\n".join(lines)
    print(table)
    result = {"settings": {k: v for k, v in vars(opts).items() if k != "report"}, "rows": rows, "table": table}
    if opts.report or opts.output:  # a study run only prints: its table must not replace a committed one
        output = Path(opts.output or Path(__file__).with_name(f"early_bird_{opts.task}.json"))
        output.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def _m(level: dict | None) -> str:
    return "–" if not level or level["metric"] is None else f"{100 * level['metric']:.2f}"


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    if not opts.report:
        study(opts)
    report(opts)


if __name__ == "__main__":
    main()
