"""The ticket's model card: `README.md` rendered from `model_cards/ticket_card.md` with `huggingface_hub.ModelCard`.

The template ships inside the package as `hf_lottery/templates/ticket_card.md`, a byte-identical copy of the
canonical `model_cards/ticket_card.md` (a test keeps them equal), so it is found from a wheel install too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..constants import LIBRARY_NAME, SPARSITY_PLOT_NAME, TICKET_CARD_NAME, TICKET_CARD_TAGS, TICKET_CARD_TEMPLATE
from ..utils.io import atomic_path
from .config import TicketConfig, split_model_kwargs
from .figures import mask_figures
from .history import main_metric, mask_cost

# Architecture suffix -> (pipeline tag, Auto class of the usage snippet).
_HEADS = (
    ("ForSequenceClassification", "text-classification", "AutoModelForSequenceClassification"),
    ("ForTokenClassification", "token-classification", "AutoModelForTokenClassification"),
    ("ForQuestionAnswering", "question-answering", "AutoModelForQuestionAnswering"),
    ("ForMultipleChoice", "multiple-choice", "AutoModelForMultipleChoice"),
    ("ForMaskedLM", "fill-mask", "AutoModelForMaskedLM"),
    ("ForCausalLM", "text-generation", "AutoModelForCausalLM"),
)


def head_of(architecture: str | None) -> tuple[str | None, str]:
    """`(pipeline tag, Auto class name)` for a model class name; `(None, "AutoModel")` when unknown."""
    for suffix, tag, auto in _HEADS:
        if architecture and architecture.endswith(suffix):
            return tag, auto
    return None, "AutoModel"


def template_text() -> str:
    """The card template shipped in the package (`hf_lottery/templates/ticket_card.md`)."""
    return resources.files("hf_lottery").joinpath("templates", TICKET_CARD_TEMPLATE).read_text(encoding="utf-8")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _is_hub_id(name: str | None) -> bool:
    if not name or Path(name).exists() or name.startswith((".", "/", "~")):
        return False
    return name.count("/") <= 1 and " " not in name


def card_data(config: TicketConfig, model_name: str, has_weights: bool = False) -> ModelCardData:
    """The YAML metadata: library, base model, tags, dataset and a `model-index` entry per round with a metric."""
    pipeline_tag, _ = head_of(config.architecture)
    metric = main_metric(config.history, config.metric)
    eval_results = []
    if metric and (config.dataset or config.task):
        short = metric.removeprefix("eval_")
        for record in config.history:
            value = record.get("metrics", {}).get(metric)
            if value is None:
                continue
            eval_results.append(
                EvalResult(
                    task_type=pipeline_tag or "other",
                    dataset_type=str(config.dataset or config.task),  # one is set (checked above)
                    dataset_name=" ".join(x for x in (config.dataset, config.task) if x),
                    dataset_config=config.task if config.dataset else None,
                    dataset_split="validation",
                    metric_type=short,
                    metric_value=value,
                    metric_name=f"{short} at {_pct(record.get('sparsity'))} sparsity (round {record.get('round')})",
                )
            )
    return ModelCardData(
        library_name=LIBRARY_NAME,
        base_model=config.base_model_name_or_path if _is_hub_id(config.base_model_name_or_path) else None,
        tags=list(TICKET_CARD_TAGS) + ([config.task] if config.task else []),
        datasets=[config.dataset] if config.dataset else None,
        pipeline_tag=pipeline_tag if has_weights else None,
        model_name=model_name,
        eval_results=eval_results or None,
    )


def _cumulative_steps(history: list[dict[str, Any]]) -> list[int | None]:
    """Optimizer steps of the run up to each round: `total_steps`, or the running sum of `steps` for histories
    written before records carried it."""
    totals: list[int | None] = []
    running: int | None = 0
    for record in history:
        steps = record.get("steps")
        running = running + steps if running is not None and isinstance(steps, int) else None
        recorded = record.get("total_steps")
        totals.append(recorded if isinstance(recorded, int) else running)
    return totals


def render_ticket_card(
    mask: Mapping[str, torch.Tensor],
    *,
    config: TicketConfig | None = None,
    repo_id: str | None = None,
    plot: str | None = None,
    has_weights: bool = False,
    speed: Mapping[str, Any] | None = None,
) -> ModelCard:
    """Render the ticket's model card.

    Args:
        mask ([`TicketMask`] or `Mapping[str, torch.Tensor]`): the ticket's mask.
        config ([`TicketConfig`], *optional*): its config; default read from `mask.metadata`.
        repo_id (`str`, *optional*): the Hub repository, for the title and the usage snippet.
        plot (`str`, *optional*): file name of the metric-vs-sparsity plot in the same folder.
        has_weights (`bool`, *optional*): the folder also holds the sparse weights (`save_sparse_model`).
        speed (`dict`, *optional*): figures of `hf_lottery.measure_speed` (`report.to_dict()`), shown as "Speed".

    Returns:
        `huggingface_hub.ModelCard`: `str(card)` is the `README.md` text.
    """
    config = config or TicketConfig.from_metadata(getattr(mask, "metadata", {}))
    model_name = (repo_id or "").split("/")[-1] or "lottery-ticket"
    base = config.base_model_name_or_path
    metric = main_metric(config.history, config.metric)
    total_steps = _cumulative_steps(config.history)
    rounds = [
        {
            "round": r.get("round", "–"),
            "sparsity": _pct(r.get("sparsity")),
            "target": _pct(r.get("target_sparsity")),
            "metric": _num(r.get("metrics", {}).get(metric)) if metric else "–",
            "train_loss": _num(r.get("train_loss")),
            "steps": _num(r.get("steps")),
            "total_steps": _num(total),
            "seconds": _num(r.get("seconds"), 1),
        }
        for r, total in zip(config.history, total_steps)
    ]
    seconds = [r.get("seconds") for r in config.history if isinstance(r.get("seconds"), (int, float))]
    mask_batches, mask_seconds = mask_cost(config.history)
    report = mask_figures(mask)
    total = report["__total__"]
    layers = [
        {
            "name": name,
            "shape": "×".join(str(d) for d in mask[name].shape),
            "numel": f"{row['numel']:,}",
            "kept": f"{row['kept']:,}",
            "sparsity": _pct(row["sparsity"]),
        }
        for name, row in report.items()
        if name != "__total__"
    ]
    _, auto_class = head_of(config.architecture)
    safe_kwargs, _ = split_model_kwargs(config.model_kwargs or {})  # a card never advertises unsafe arguments
    kwargs = "".join(f", {k}={v!r}" for k, v in safe_kwargs.items())
    return ModelCard.from_template(
        card_data(config, model_name, has_weights),
        template_str=template_text(),
        model_name=model_name,
        repo_id=repo_id or "path/to/this/ticket",
        base_model=base,
        base_model_url=f"https://huggingface.co/{base}" if _is_hub_id(base) else None,
        task=config.task,
        dataset=config.dataset,
        pruning_method=config.pruning_method,
        num_params=f"{total['numel']:,}",
        num_kept=f"{total['kept']:,}",
        density_pct=_pct(1.0 - total["sparsity"]),
        sparsity_pct=_pct(total["sparsity"]),
        metric_label=metric.removeprefix("eval_") if metric else "metric",
        rounds=rounds,
        cost_steps=_num(total_steps[-1] if total_steps else None),
        cost_seconds=_num(sum(seconds) if seconds else None, 1),
        cost_scoring_batches=_num(mask_batches) if mask_batches else None,
        cost_mask_seconds=_num(mask_seconds, 1),
        plot=plot,
        layers=layers,
        lottery_args=sorted(config.lottery_args.items()),
        auto_class=auto_class,
        load_kwargs=kwargs,
        has_weights=has_weights,
        base_fingerprint=config.base_fingerprint,
        format_version=config.format_version,
        hf_lottery_version=config.hf_lottery_version,
        speed=speed_markdown(speed) if speed else None,
    )


# --- the "Speed" section ---------------------------------------------------------------------------------------------

SPEED_HEADING = "## Speed"


def _ms(x: Any) -> str:
    return "–" if x is None else f"{x:.2f}"


def _ratio(x: Any) -> str:
    return "–" if x is None else f"{x:.2f}×"


def speed_markdown(speed: Mapping[str, Any]) -> str:
    """The body of the card's "Speed" section: a table of `hf_lottery.measure_speed` figures and the conditions.

    Args:
        speed (`dict`): `SpeedReport.to_dict()` (plain values only; `ticket/` knows no model).
    """
    lines = [
        "| Threads | Batch | Sequence | Latency (ms) | Reference (ms) | Speed-up | FLOP ideal | Speed-up / ideal |",
        "|--------:|------:|---------:|-------------:|---------------:|---------:|-----------:|-----------------:|",
    ]
    for f in speed.get("figures", []):
        efficiency = f.get("flop_efficiency")
        lines.append(
            f"| {f.get('threads')} | {f.get('batch_size')} | {f.get('seq_len')} | {_ms(f.get('latency_ms'))} | "
            f"{_ms(f.get('reference_latency_ms'))} | {_ratio(f.get('speedup'))} | {_ratio(f.get('flop_ideal'))} | "
            f"{'–' if efficiency is None else f'{efficiency:.2f}'} |"
        )
    load = speed.get("load_average")
    load_text = "not recorded" if not load else " / ".join(f"{x:.2f}" for x in load)
    label = f" of the {speed['label']} model" if speed.get("label") else ""
    lines += [
        "",
        f"Median latency{label} per forward pass over {speed.get('repeats')} alternated rounds with the reference. "
        f"CPU: {speed.get('cpu')}; torch {speed.get('torch_version')}; all threads = {speed.get('all_threads')}; "
        f"load average (1/5/15 min) before: {load_text}. The FLOP ideal is the ratio of the transformer blocks' "
        "matmul FLOPs (int8 not counted). Latency depends on the machine and its load: measure on yours with "
        "`hf-lottery speed PATH --reference DENSE`.",
    ]
    return "\n".join(lines)


def splice_speed_section(text: str, speed: Mapping[str, Any] | None) -> str:
    """`text` (a card) with its "Speed" section replaced by `speed`'s, appended when it has none, removed for None.

    The section runs from its `## Speed` heading to the next `## ` heading or the end.
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SPEED_HEADING), None)
    if start is None:
        before, after = lines, []
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        before, after = lines[:start], lines[end:]
    while before and not before[-1].strip():
        before.pop()
    section = [SPEED_HEADING, "", speed_markdown(speed), ""] if speed else []
    joined = before + ([""] if before and section else []) + section + ([""] if after and not section else []) + after
    return "\n".join(joined).rstrip("\n") + "\n"


def write_ticket_card(
    folder: str | os.PathLike,
    mask: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
    *,
    repo_id: str | None = None,
    has_weights: bool = False,
) -> Path:
    """Write (atomically) the ticket's card `README.md` into `folder`, which holds the ticket files already.

    Args:
        folder (`str` or `os.PathLike`): the ticket folder; its plot is linked when present.
        mask ([`TicketMask`] or `Mapping[str, torch.Tensor]`): the ticket's mask.
        metadata (`Mapping`): the ticket's metadata (`TicketMask.metadata`).
        repo_id (`str`, *optional*): the Hub repository, for the title and the usage snippet.
        has_weights (`bool`, *optional*): the folder also holds the sparse weights: the card says so and carries
            the `pipeline_tag` of the model's head.

    Returns:
        `Path`: the card file.
    """
    folder = Path(folder)
    config = TicketConfig.from_metadata(metadata).for_mask(mask)
    plot = SPARSITY_PLOT_NAME if (folder / SPARSITY_PLOT_NAME).is_file() else None
    card = render_ticket_card(mask, config=config, repo_id=repo_id, plot=plot, has_weights=has_weights)
    path = folder / TICKET_CARD_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(str(card), encoding="utf-8")
    return path
