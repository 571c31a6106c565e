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
from .config import TicketConfig
from .figures import mask_figures
from .history import main_metric

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


def render_ticket_card(
    mask: Mapping[str, torch.Tensor],
    *,
    config: TicketConfig | None = None,
    repo_id: str | None = None,
    plot: str | None = None,
    has_weights: bool = False,
) -> ModelCard:
    """Render the ticket's model card.

    Args:
        mask ([`TicketMask`] or `Mapping[str, torch.Tensor]`): the ticket's mask.
        config ([`TicketConfig`], *optional*): its config; default read from `mask.metadata`.
        repo_id (`str`, *optional*): the Hub repository, for the title and the usage snippet.
        plot (`str`, *optional*): file name of the metric-vs-sparsity plot in the same folder.
        has_weights (`bool`, *optional*): the folder also holds the sparse weights (`save_sparse_model`).

    Returns:
        `huggingface_hub.ModelCard`: `str(card)` is the `README.md` text.
    """
    config = config or TicketConfig.from_metadata(getattr(mask, "metadata", {}))
    model_name = (repo_id or "").split("/")[-1] or "lottery-ticket"
    base = config.base_model_name_or_path
    metric = main_metric(config.history, config.metric)
    rounds = [
        {
            "round": r.get("round", "–"),
            "sparsity": _pct(r.get("sparsity")),
            "target": _pct(r.get("target_sparsity")),
            "metric": _num(r.get("metrics", {}).get(metric)) if metric else "–",
            "train_loss": _num(r.get("train_loss")),
            "steps": _num(r.get("steps")),
            "seconds": _num(r.get("seconds"), 1),
        }
        for r in config.history
    ]
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
    kwargs = "".join(f", {k}={v!r}" for k, v in (config.model_kwargs or {}).items())
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
        plot=plot,
        layers=layers,
        lottery_args=sorted(config.lottery_args.items()),
        auto_class=auto_class,
        load_kwargs=kwargs,
        has_weights=has_weights,
        base_fingerprint=config.base_fingerprint,
        format_version=config.format_version,
        hf_lottery_version=config.hf_lottery_version,
    )


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
