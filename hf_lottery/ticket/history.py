"""Per-round records of a lottery run: `lottery_history.json` and the metric-vs-sparsity plot."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from transformers.utils import logging

from ..utils.io import atomic_path, write_json

logger = logging.get_logger(__name__)

# The record of one round, as both LotteryTrainer and LotteryCallback write it (`lottery_history.json`, the
# ticket's `history`, the CLI table, the card):
ROUND_RECORD_FIELDS = {
    "round": "int: 0 is the dense model; with LotteryCallback, the pruning level inside the one run",
    "sparsity": "float: fraction of the masked weights pruned while the round trained",
    "target_sparsity": "float: the schedule's sparsity for the round",
    "metrics": "dict: eval metrics at the end of the round (eval_*; {} without an eval set)",
    "train_loss": "float or None: mean training loss of the round",
    "steps": "int: optimizer steps the round trained",
    "total_steps": "int: optimizer steps of the run up to the end of the round (cost of the ticket so far)",
    "seconds": "float: wall time of the round",
    "tensor_sparsity": "dict: per masked tensor, the fraction pruned",
    "removed_groups": "dict, structured granularities only: heads and neurons removed in total",
    "early_bird": "dict, early-bird rounds only: stopped_at_step (None: trained to the end) and the mask distances",
    "next_mask": "dict, rounds the run pruned after: what choosing the next mask from the round's weights cost, "
    "scoring_batches (batches a scorer read: HYDRA's score steps, calibration passes; 0 for magnitude) and seconds",
}
OPTIONAL_RECORD_FIELDS = ("removed_groups", "early_bird", "next_mask")
REQUIRED_RECORD_FIELDS = tuple(name for name in ROUND_RECORD_FIELDS if name not in OPTIONAL_RECORD_FIELDS)

_NOT_METRICS = ("eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch")


def main_metric(records: Sequence[dict[str, Any]], preferred: str | None = None) -> str | None:
    """The metric to plot: `preferred` (e.g. `metric_for_best_model`), else the first task metric, else loss."""
    if not records:
        return None
    metrics = records[-1].get("metrics", {})
    if preferred:
        key = preferred if preferred.startswith("eval_") else f"eval_{preferred}"
        if key in metrics:
            return key
    for key in metrics:
        if key.startswith("eval_") and key not in _NOT_METRICS:
            return key
    return "eval_loss" if "eval_loss" in metrics else None


def mask_cost(history: list[dict[str, Any]]) -> tuple[int, float]:
    """Scorer batches and seconds spent choosing the masks (the records' `next_mask`); other values are skipped,
    as a card is rendered from a ticket's untrusted metadata."""
    batches, seconds = 0, 0.0
    for record in history:
        cost = record.get("next_mask")
        if not isinstance(cost, dict):
            continue
        if isinstance(cost.get("scoring_batches"), int) and not isinstance(cost.get("scoring_batches"), bool):
            batches += cost["scoring_batches"]
        if isinstance(cost.get("seconds"), (int, float)) and not isinstance(cost.get("seconds"), bool):
            seconds += float(cost["seconds"])
    return batches, seconds


def write_history(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> None:
    """Write the round records as JSON, atomically."""
    write_json(path, {"rounds": list(records)})


def plot_history(
    path: str | os.PathLike, records: Sequence[dict[str, Any]], metric: str | None = None, title: str | None = None
) -> bool:
    """Plot `metric` against sparsity (one point per round) to a PNG, atomically. Returns False if nothing to plot."""
    metric = main_metric(records, metric)
    points = [(r["sparsity"], r["metrics"][metric]) for r in records if metric in r.get("metrics", {})]
    if not points:
        return False
    try:  # the `plot` extra; without it the history is written, the plot skipped
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.info('matplotlib is not installed (pip install "hf-lottery[plot]"): no plot written to %s.', path)
        return False

    # A Figure on its own Agg canvas: no pyplot, so the process's matplotlib backend is left as it is.
    fig = Figure(figsize=(5, 3.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs, ys = zip(*points, strict=True)
    ax.plot([100 * x for x in xs], ys, marker="o", label="ticket")
    ax.axhline(ys[0], color="grey", linestyle="--", linewidth=1, label="dense (round 0)")
    ax.set_xlabel("sparsity of prunable weights (%)")
    ax.set_ylabel(str(metric).removeprefix("eval_"))
    ax.set_title(title or plot_title())
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return True


def plot_title(task: str | None = None, model: str | None = None) -> str:
    """The plot's title, naming the task and the base model (its last path component) when known."""
    named = " · ".join(x for x in (task, model.rstrip("/").split("/")[-1] if model else None) if x)
    return f"Lottery ticket: {named}" if named else "Lottery ticket: metric vs sparsity"
