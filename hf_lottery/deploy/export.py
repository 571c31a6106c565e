"""Export a structurally pruned model for CPU inference: heads and neurons removed, Linears optionally int8.

The folder is a `save_pretrained` checkpoint of the compacted fp32 model (it loads with plain `from_pretrained`,
see the structured checkpoints in docs/structured.md) plus `cpu_export.json`, which says which Linears to quantize
and with which backend. [`load_for_cpu`] loads the checkpoint and quantizes those Linears again; dynamic int8
quantization is a deterministic function of the fp32 weights, so the loaded model is the exported one, without any
pickled quantized module on disk.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import ModelCard, ModelCardData, hf_hub_download
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import logging

from ..constants import (
    CPU_EXPORT_CONFIG_NAME,
    CPU_EXPORT_FORMAT_VERSION,
    LIBRARY_NAME,
    SPEED_FIGURES_NAME,
    TICKET_CARD_NAME,
    __version__,
)
from ..structured.layouts import find_layout
from ..structured.removal import compact
from ..structured.shrink import (
    PRUNED_HEADS_ATTR,
    PRUNED_NEURONS_ATTR,
    get_blocks,
    kept_indices,
    layout_linear,
    original_counts,
)
from ..structured.surgery import pad_neurons
from ..ticket.card import head_of, splice_speed_section
from ..utils.io import atomic_path, write_json
from .quantize import (
    BACKENDS,
    QUANTIZATIONS,
    WEIGHT_SCALES,
    available_backends,
    quantizable_linears,
    quantize_linears_,
    resolve_backend,
)
from .speed import SpeedReport, measure_speed

logger = logging.get_logger(__name__)

# 16 fp32 lanes fill one AVX-512 register; 16 and 32 measured alike on MiniLM's shapes (bench/RESULTS.md).
DEFAULT_NEURON_MULTIPLE = 16


def dead_groups(model: PreTrainedModel) -> dict[str, dict[int, list[int]]]:
    """
    Heads and neurons that contribute nothing: every column they feed in the attention-output (heads) or the
    feed-forward output Linear (neurons) is zero. Removing them leaves the model's function unchanged.

    Returns:
        `dict`: `{"heads": {layer: [original indices]}, "neurons": {...}}`, layers with none omitted.
    """
    layout = find_layout(model.config)
    if layout is None:
        return {"heads": {}, "neurons": {}}
    _, num_heads, num_neurons = original_counts(model.config, layout)
    found: dict[str, dict[int, list[int]]] = {"heads": {}, "neurons": {}}
    for i, block in enumerate(get_blocks(model, layout)):
        attention_output = layout_linear(block, layout.attention_output).weight
        head_size = int(getattr(block.get_submodule(layout.attention), layout.head_size_attr))
        kept_heads = kept_indices(num_heads, getattr(block, PRUNED_HEADS_ATTR, ()))
        if kept_heads and attention_output.shape[1]:
            alive = attention_output.detach().reshape(attention_output.shape[0], len(kept_heads), head_size)
            dead = [kept_heads[p] for p in (alive == 0).all(dim=2).all(dim=0).nonzero().flatten().tolist()]
            if dead:
                found["heads"][i] = dead
        output = layout_linear(block, layout.output).weight
        kept_neurons = kept_indices(num_neurons, getattr(block, PRUNED_NEURONS_ATTR, ()))
        if kept_neurons and output.shape[1]:
            dead = [kept_neurons[p] for p in (output.detach() == 0).all(dim=0).nonzero().flatten().tolist()]
            if dead:
                found["neurons"][i] = dead
    return found


def compact_for_inference(
    model: PreTrainedModel,
    mask: Mapping[str, torch.Tensor] | None = None,
    neuron_multiple_of: int | None = None,
) -> PreTrainedModel:
    """
    A copy of `model` in fp32 and eval mode on CPU, with `mask` applied and every dead head and neuron removed
    physically.

    Args:
        model (`PreTrainedModel`): a full-shape model whose pruned groups are zero, or an already shrunk one.
        mask ([`TicketMask`], *optional*): a (structured) ticket of `model`; its zeros are applied first.
        neuron_multiple_of (`int`, *optional*): then round each feed-forward width up to a multiple of this with
            zero neurons ([`pad_neurons`]: same function, faster GEMMs).
    """
    # transformers wraps `PreTrainedModel.to` in `functools.wraps`, whose stub mypy does not bind as a method.
    compacted = copy.deepcopy(model).to("cpu", torch.float32).eval()  # type: ignore[arg-type]
    if mask is not None:
        params = dict(compacted.named_parameters())
        with torch.no_grad():
            for name, keep in mask.items():
                if name not in params or params[name].shape != keep.shape:
                    raise ValueError(f"The mask does not fit the model: {name!r}.")
                params[name].mul_(keep.to(params[name].dtype))
    groups = dead_groups(compacted)
    compact(compacted, heads=groups["heads"], neurons=groups["neurons"])
    if neuron_multiple_of is not None and find_layout(compacted.config) is not None:
        pad_neurons(compacted, neuron_multiple_of)
    return compacted


def _auto_class_name(model: PreTrainedModel) -> str:
    return head_of(type(model).__name__)[1]


def export_for_cpu(
    model: PreTrainedModel,
    save_directory: str | os.PathLike | None = None,
    *,
    mask: Mapping[str, torch.Tensor] | None = None,
    quantize: str | None = "int8",
    backend: str = "auto",
    modules: Iterable[str] | None = None,
    weight_scales: str = "per_channel",
    neuron_multiple_of: int | None = DEFAULT_NEURON_MULTIPLE,
    reference: nn.Module | None = None,
    measure: bool = False,
    speed: SpeedReport | Mapping[str, Any] | None = None,
    speed_kwargs: Mapping[str, Any] | None = None,
    tokenizer: Any = None,
) -> nn.Module:
    """
    Compact a structurally pruned model and optionally quantize its Linears to int8, for CPU inference.

    Args:
        model (`PreTrainedModel`):
            A model of a supported family (see `hf_lottery.structured.layouts`): full-shape with its removed heads and
            neurons zeroed (a structured ticket, e.g. `LotteryArguments(granularity="head+neuron")`), or already
            shrunk (`prune_heads`, `compact`, the trainer's `save_model`). Not modified.
        save_directory (`str` or `os.PathLike`, *optional*):
            Write the export here (see [`load_for_cpu`]); without it the model is only returned.
        mask ([`TicketMask`], *optional*):
            The ticket's mask; applied before compaction (every head or neuron whose output columns it zeroes goes).
        quantize (`str`, *optional*, defaults to `"int8"`):
            `"int8"`: dynamic int8 quantization of the Linears (weights int8, activations quantized per batch);
            `None`: fp32.
        backend (`str`, *optional*, defaults to `"auto"`):
            `"torch.ao"` (`quantize_dynamic`, ships with torch, deprecated), `"torchao"` (`pip install torchao`), or
            `"auto"`: the first installed of `hf_lottery.deploy.quantize.BACKEND_PREFERENCE`.
        modules (`Iterable[str]`, *optional*):
            Regexes over module names selecting the Linears to quantize; default every `nn.Linear` (the encoder, the
            pooler and the task head).
        weight_scales (`str`, *optional*, defaults to `"per_channel"`):
            One int8 scale per output channel of each weight, or `"per_tensor"` (torch.ao only; less accurate:
            see `hf_lottery.deploy.quantize`).
        neuron_multiple_of (`int`, *optional*, defaults to 16):
            Round every feed-forward width up to a multiple of this with zero neurons ([`pad_neurons`]): the function
            is unchanged and the GEMMs avoid a ragged last block (5-10 % faster end to end on a 60 %-pruned MiniLM,
            see `bench/RESULTS.md`); `None` keeps the widths exactly as pruned.
        reference (`nn.Module`, *optional*):
            The model to compare with when `measure=True`, typically the dense fine-tuned model.
        measure (`bool`, *optional*, defaults to `False`):
            Run [`measure_speed`] on the exported model (against `reference`) and record the figures.
        speed ([`SpeedReport`] or `dict`, *optional*):
            Figures measured beforehand, recorded as they are (ignored when `measure=True`).
        speed_kwargs (`dict`, *optional*):
            Arguments of [`measure_speed`] (`batch_sizes`, `seq_len`, `threads`, `repeats`, ...).
        tokenizer (*optional*):
            Saved beside the model (`save_pretrained`).

    Returns:
        `nn.Module`: the exported model in eval mode; when measured, its figures are in `model.speed_report`.

    The folder holds the compacted fp32 weights (`model.safetensors`, `config.json` with `pruned_heads` /
    `pruned_neurons`, and the self-contained modeling file), `cpu_export.json`, `speed.json` when figures are given,
    and a `README.md` whose "Speed" section shows them. Load it with [`load_for_cpu`].
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"`quantize` must be one of {QUANTIZATIONS}, got {quantize!r}.")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"`backend` must be 'auto' or one of {BACKENDS}, got {backend!r}.")
    compacted = compact_for_inference(model, mask, neuron_multiple_of)
    names = quantizable_linears(compacted, modules) if quantize else []
    used: str | None = None
    exported = compacted
    if quantize:
        used = resolve_backend(backend)
        # The fp32 compacted model is what gets saved; quantize a copy.
        exported = copy.deepcopy(compacted) if save_directory is not None else compacted
        quantize_linears_(exported, names, used, weight_scales)
    report: SpeedReport | None = None
    if measure:
        report = measure_speed(exported, reference=reference, **dict(speed_kwargs or {}))
    elif speed is not None:
        report = speed if isinstance(speed, SpeedReport) else SpeedReport.from_dict(speed)
    if report is not None:
        # torch types an attribute a Module does not declare as `Tensor | Module`.
        exported.speed_report = report  # type: ignore[assignment]
    if save_directory is not None:
        out = Path(save_directory)
        compacted.save_pretrained(out)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
        write_json(
            out / CPU_EXPORT_CONFIG_NAME,
            {
                "format_version": CPU_EXPORT_FORMAT_VERSION,
                "hf_lottery_version": __version__,
                "torch_version": torch.__version__,
                "architecture": type(compacted).__name__,
                "quantize": quantize,
                "backend": used,
                "weight_scales": weight_scales if quantize else None,
                "modules": names,
                "neuron_multiple_of": neuron_multiple_of,
            },
        )
        if report is not None:
            write_json(out / SPEED_FIGURES_NAME, report.to_dict())
        _write_card(out, compacted, quantize, used, report)
    return exported


def _write_card(folder: Path, model: PreTrainedModel, quantize: str | None, backend: str | None, report) -> None:
    auto_class = _auto_class_name(model)
    kind = "int8 dynamically quantized Linears" if quantize else "fp32"
    counts = ", ".join(f"{len(v)} layer(s) lost {k}" for k, v in _structure(model).items() if v) or "no group removed"
    data = ModelCardData(library_name=LIBRARY_NAME, tags=["pruning", "structured-pruning", "cpu"])
    content = (
        f"---\n{data.to_yaml()}\n---\n\n# CPU export\n\n"
        f"A structurally pruned `{type(model).__name__}` ({counts}), exported by hf_lottery for CPU inference "
        f"({kind}{f', backend `{backend}`' if backend else ''}).\n\n## Usage\n\n"
        "```python\nfrom hf_lottery import load_for_cpu\n\n"
        'model = load_for_cpu("path/to/this/folder")  # compacted, and int8 again if it was exported so\n```\n\n'
        "The weights are the compacted fp32 ones; without hf_lottery they load as a checkpoint (fp32):\n\n"
        f"```python\nfrom transformers import {auto_class}\n\n"
        f'model = {auto_class}.from_pretrained("path/to/this/folder", trust_remote_code=True)\n```\n'
    )
    card = splice_speed_section(content, report.to_dict() if report is not None else None)
    with atomic_path(folder / TICKET_CARD_NAME) as tmp:
        ModelCard(card).save(tmp)


def _structure(model: PreTrainedModel) -> dict[str, Any]:
    return {
        "heads": getattr(model.config, PRUNED_HEADS_ATTR, None) or {},
        "neurons": getattr(model.config, PRUNED_NEURONS_ATTR, None) or {},
    }


def write_speed_card(folder: str | os.PathLike, speed: SpeedReport | Mapping[str, Any]) -> None:
    """
    Record speed figures in a saved model folder: `speed.json`, and a "Speed" section in its `README.md` (replaced
    if there is one, appended otherwise; the file is created if missing).

    Use it after `LotteryTrainer.save_model(d)` or `model.save_pretrained(d)`:

    ```python
    >>> report = measure_speed(model, reference=dense)
    >>> write_speed_card("out/model", report)
    ```
    """
    report = speed if isinstance(speed, SpeedReport) else SpeedReport.from_dict(speed)
    folder = Path(folder)
    write_json(folder / SPEED_FIGURES_NAME, report.to_dict())
    readme = folder / TICKET_CARD_NAME
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    with atomic_path(readme) as tmp:
        tmp.write_text(splice_speed_section(text, report.to_dict()), encoding="utf-8")


def read_export_config(folder: str | os.PathLike, model: nn.Module | None = None) -> dict[str, Any]:
    """
    Read and check `cpu_export.json` of an export folder (untrusted input: plain JSON, checked field by field).

    Raises:
        `ValueError`: naming the file, when it is missing, not JSON, of a newer format, or holds a bad field (with
        `model`, also a module name that is not one of its Linears).
    """
    path = Path(folder) / CPU_EXPORT_CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{folder} is not a CPU export: {CPU_EXPORT_CONFIG_NAME} is missing.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}.")
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: invalid format_version {version!r} (expected an integer >= 1).")
    if version > CPU_EXPORT_FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {version}, newer than this hf_lottery reads ({CPU_EXPORT_FORMAT_VERSION}); "
            "upgrade hf_lottery."
        )
    if data.get("quantize") not in QUANTIZATIONS:
        raise ValueError(f"{path}: 'quantize' must be one of {QUANTIZATIONS}, got {data.get('quantize')!r}.")
    if data.get("backend") not in (None, *BACKENDS):
        raise ValueError(f"{path}: 'backend' must be one of {BACKENDS} or null, got {data.get('backend')!r}.")
    names = data.get("modules", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: 'modules' must be a list of module names.")
    if data["quantize"] and data.get("backend") is None:
        raise ValueError(f"{path}: 'backend' is required when 'quantize' is set.")
    if version == 1:  # written before weight scales were recorded: torch.ao then scaled per tensor
        data["weight_scales"] = (
            ("per_tensor" if data["backend"] == "torch.ao" else "per_channel") if data["quantize"] else None
        )
    if data["quantize"] and data.get("weight_scales") not in WEIGHT_SCALES:
        raise ValueError(f"{path}: 'weight_scales' must be one of {WEIGHT_SCALES}, got {data.get('weight_scales')!r}.")
    multiple = data.get("neuron_multiple_of")
    if multiple is not None and (isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1):
        raise ValueError(f"{path}: 'neuron_multiple_of' must be a positive integer or null, got {multiple!r}.")
    if not isinstance(data.get("architecture"), str):
        raise ValueError(f"{path}: 'architecture' must be a model class name.")
    if model is not None:
        linears = {n for n, m in model.named_modules() if type(m) is nn.Linear}
        unknown = [n for n in names if n not in linears]
        if unknown:
            raise ValueError(f"{path}: {unknown[0]!r} is not a Linear of the model in {folder}.")
    return data


def _local_export_folder(path: str | os.PathLike, **hub_kwargs: Any) -> Path:
    if Path(path).is_dir():
        return Path(path)
    return Path(hf_hub_download(str(path), CPU_EXPORT_CONFIG_NAME, **hub_kwargs)).parent


def load_for_cpu(
    path: str | os.PathLike,
    model_class: type[Any] | None = None,
    backend: str | None = None,
    revision: str | None = None,
    **model_kwargs: Any,
) -> nn.Module:
    """
    Load a folder written by [`export_for_cpu`]: the compacted checkpoint, int8-quantized again if it was exported so.

    Args:
        path (`str` or `os.PathLike`):
            The export folder, or a Hub repository holding one.
        model_class (*optional*):
            An Auto class or model class with `from_pretrained`; default the Auto class of the recorded
            architecture (`AutoModelForSequenceClassification` for a `...ForSequenceClassification`).
        backend (`str`, *optional*):
            Override the recorded int8 backend. By default the recorded one is used, or, when it is not installed
            (e.g. a torch without `torch.ao.quantization`), the first available with a warning: the int8 rounding of
            the two backends differs, so outputs then match the export only within the int8 tolerance.
        revision (`str`, *optional*): Hub revision.
        model_kwargs: passed to `from_pretrained` (e.g. `attn_implementation="sdpa"`).

    Returns:
        `nn.Module`: the model in eval mode.

    Needs hf_lottery (it rebuilds the shrunk shapes) and, for int8, torch with `torch.ao.quantization` or torchao.
    """
    hub = {"revision": revision} if revision else {}
    folder = _local_export_folder(path, **hub)
    config = read_export_config(folder)
    if model_class is None:
        model_class = getattr(transformers, head_of(config["architecture"])[1])
    source = folder if Path(path).is_dir() else path
    model = model_class.from_pretrained(source, **hub, **model_kwargs).eval()
    config = read_export_config(folder, model)
    if config["quantize"]:
        wanted = backend or config["backend"]
        if backend is None and wanted not in available_backends():
            fallback = resolve_backend("auto")
            logger.warning(
                f"{folder} was quantized with {wanted!r}, which is not available here; using {fallback!r} (outputs "
                "match the export within the int8 tolerance, not bit for bit)."
            )
            wanted = fallback
        # torchao scales per channel only; a per-tensor export re-quantized by it matches within the int8 tolerance.
        scales = config["weight_scales"] if wanted == "torch.ao" else "per_channel"
        quantize_linears_(model, config["modules"], wanted, scales)
    return model
