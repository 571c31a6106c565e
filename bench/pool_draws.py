"""Pool repeated draws of a cheap ticket against full IMP: how far off is it, and how well can 5 seeds tell?

Each input is an `early_bird.py --report` JSON of the same task, level and full-IMP runs; each holds one draw of the
candidate per seed (another draw: other random choices in the search, the same seed for everything else). Per seed,
Δ = candidate − full IMP. The pooled estimate is the mean over seeds of the per-seed mean Δ (each seed weighs the
same), with its standard error over seeds. With two or more draws per seed the spread splits into a part that moves
with the draw (within a seed) and a part that moves with the seed (one-way random-effects ANOVA), and the report says
how many seeds × draws would bring the standard error to a given size.

    python bench/pool_draws.py early_bird_mrpc_hydra40_vs_r10.json early_bird_mrpc_hydra_trainer40_vs_r10_5seeds.json \
        --output pooled.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

FULL = "full"


def candidate_key(row: dict) -> str:
    keys = [k for k, v in row.items() if isinstance(v, dict) and k != FULL and "metric" in v]
    if len(keys) != 1:
        raise ValueError(f"a report row should hold full IMP and one candidate, got {sorted(keys)}")
    return keys[0]


def deltas(paths: list[Path], target: float) -> dict[int, list[float]]:
    """`{seed: [Δ of each draw, in points]}`; full IMP must be the same run in every file."""
    per_seed: dict[int, list[float]] = {}
    full_of: dict[int, float] = {}
    for path in paths:
        for row in json.loads(path.read_text(encoding="utf-8"))["rows"]:
            if abs(row["target"] - target) > 1e-9 or row.get(FULL) is None:
                continue
            cand = row.get(candidate_key(row))
            if cand is None:
                continue
            seed, full = row["seed"], row[FULL]["metric"]
            if full_of.setdefault(seed, full) != full:
                raise ValueError(f"{path}: seed {seed}'s full-IMP metric differs from another file's")
            per_seed.setdefault(seed, []).append(100 * (cand["metric"] - full))
    return per_seed


def pool(per_seed: dict[int, list[float]], resolution: float) -> dict:
    means = {s: statistics.fmean(d) for s, d in sorted(per_seed.items())}
    n_seeds = len(means)
    mean = statistics.fmean(means.values())
    sd = statistics.stdev(means.values()) if n_seeds > 1 else float("nan")
    out: dict = {
        "per_seed": {
            str(s): {"deltas": [round(x, 3) for x in per_seed[s]], "mean": round(m, 3)} for s, m in means.items()
        },
        "tickets": sum(len(d) for d in per_seed.values()),
        "seeds": n_seeds,
        "mean_delta": round(mean, 3),
        "std_over_seed_means": round(sd, 3),
        "standard_error": round(sd / math.sqrt(n_seeds), 3),
    }
    draws = {len(d) for d in per_seed.values()}
    if len(draws) == 1 and (k := draws.pop()) >= 2 and n_seeds >= 2:
        within = statistics.fmean(statistics.variance(d) for d in per_seed.values())  # σ²_draw
        between = max(statistics.variance(means.values()) - within / k, 0.0)  # σ²_seed
        out["variance"] = {"draw": round(within, 3), "seed": round(between, 3), "draws_per_seed": k}
        # s.e.² of the pooled mean with S seeds × K draws: (σ²_seed + σ²_draw / K) / S.
        out["seeds_needed"] = {str(kk): math.ceil((between + within / kk) / resolution**2) for kk in (1, 2, 3, 5)}
        out["seeds_needed_for_standard_error"] = resolution
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", type=Path, help="early_bird.py --report JSONs, one draw each")
    p.add_argument("--target", type=float, default=0.4)
    p.add_argument("--resolution", type=float, default=0.25, help="the standard error to size the study for, points")
    p.add_argument("--output", type=Path, default=None)
    opts = p.parse_args(argv)
    result = {"inputs": [str(x) for x in opts.reports], "target": opts.target}
    result["mean_delta_per_input"] = {
        str(path): round(statistics.fmean(d[0] for d in deltas([path], opts.target).values()), 3)
        for path in opts.reports
    }
    result |= pool(deltas(opts.reports, opts.target), opts.resolution)
    text = json.dumps(result, indent=1)
    print(text)
    if opts.output is not None:
        opts.output.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
