"""CPU latency of a (pruned, exported) model against a reference: medians of alternated runs and the FLOP ideal.

The figures are only as good as the machine is quiet: [`SpeedReport`] records the load average before and after,
the CPU model, torch version and thread counts, so that a reader can judge them.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedModel

from ..structured.flops import encoder_matmul_flops
from ..structured.layouts import find_layout
from ..structured.shrink import PRUNED_HEADS_ATTR, PRUNED_NEURONS_ATTR
from ..structured.surgery import PRUNED_LAYERS_ATTR, removed_layers

ALL_THREADS = "all"
# No released transformer is deeper; bounds what a config's `pruned_layers` record can make the reference allocate.
MAX_REFERENCE_LAYERS = 1024


def cpu_model() -> str:
    """The CPU model name from `/proc/cpuinfo` (Linux), else `platform.processor()`, else `"unknown"`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (`/proc/loadavg`), or `None` where unavailable."""
    try:
        with open("/proc/loadavg", encoding="utf-8") as f:
            return [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


@dataclass
class SpeedFigure:
    """
    One measured setting.

    Attributes:
        threads (`int`): torch intra-op threads.
        batch_size (`int`): sequences per forward pass.
        seq_len (`int`): tokens per sequence.
        latency_ms (`float`): median milliseconds per forward pass of the model.
        reference_latency_ms (`float`, *optional*): the same for the reference.
        speedup (`float`, *optional*): `reference_latency_ms / latency_ms`.
        flop_ideal (`float`, *optional*): reference / model matmul FLOPs of the transformer blocks (int8 not counted).
        flop_efficiency (`float`, *optional*): `speedup / flop_ideal`.
    """

    threads: int
    batch_size: int
    seq_len: int
    latency_ms: float
    reference_latency_ms: float | None = None
    speedup: float | None = None
    flop_ideal: float | None = None
    flop_efficiency: float | None = None


@dataclass
class SpeedReport:
    """
    What [`measure_speed`] measured, with the conditions it was measured in.

    Attributes:
        figures (`list[SpeedFigure]`): one per (threads, batch size).
        cpu (`str`): CPU model name.
        torch_version (`str`): torch version.
        all_threads (`int`): the thread count used for "all threads".
        repeats (`int`): timed rounds per setting (the median is kept).
        load_average (`list[float]`, *optional*): `/proc/loadavg` (1, 5, 15 min) before measuring.
        load_average_after (`list[float]`, *optional*): the same after.
        model_flops (`int`, *optional*): matmul FLOPs of the model's blocks at batch 1.
        reference_flops (`int`, *optional*): the same for the reference.
        label (`str`, *optional*): what the model is (e.g. "int8"), free text.
    """

    figures: list[SpeedFigure]
    cpu: str
    torch_version: str
    all_threads: int
    repeats: int
    load_average: list[float] | None = None
    load_average_after: list[float] | None = None
    model_flops: int | None = None
    reference_flops: int | None = None
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable figures (what `speed.json` holds)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpeedReport:
        """
        Rebuild a report from [`to_dict`] output (e.g. a `speed.json` read from disk: checked, never executed).

        Raises:
            `ValueError`: for a missing or mistyped field.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"Speed figures must be a JSON object, got {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("figures", "cpu", "torch_version", "all_threads", "repeats"):
            if name not in values:
                raise ValueError(f"Speed figures lack {name!r}.")
        if not isinstance(values["figures"], list) or not all(isinstance(f, Mapping) for f in values["figures"]):
            raise ValueError("Speed figures: 'figures' must be a list of objects.")
        figure_fields = {f.name: f for f in fields(SpeedFigure)}
        figures = []
        for raw in values["figures"]:
            row = {k: v for k, v in raw.items() if k in figure_fields}
            for name in ("threads", "batch_size", "seq_len", "latency_ms"):
                if not isinstance(row.get(name), (int, float)) or isinstance(row.get(name), bool):
                    raise ValueError(f"Speed figures: a figure has no numeric {name!r}.")
            for name, value in row.items():
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise ValueError(f"Speed figures: {name!r} must be a number, got {value!r}.")
            figures.append(SpeedFigure(**row))
        for name in ("cpu", "torch_version"):
            if not isinstance(values[name], str):
                raise ValueError(f"Speed figures: {name!r} must be a string.")
        for name in ("all_threads", "repeats", "model_flops", "reference_flops"):
            value = values.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"Speed figures: {name!r} must be an integer, got {value!r}.")
        for name in ("load_average", "load_average_after"):
            value = values.get(name)
            if value is not None and not (
                isinstance(value, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
            ):
                raise ValueError(f"Speed figures: {name!r} must be a list of numbers.")
        if not isinstance(values.get("extra", {}), dict) or not isinstance(values.get("label") or "", str):
            raise ValueError("Speed figures: 'extra' must be an object and 'label' a string.")
        values["figures"] = figures
        return cls(**values)


def unpruned_reference(model: nn.Module) -> nn.Module:
    """
    A model of `model`'s class and config with nothing removed (no `pruned_heads` / `pruned_neurons`, the blocks
    of `pruned_layers` back), fp32, with randomly initialised weights: a latency reference for a shrunk model when
    the dense one is not at hand (dense fp32 latency does not depend on the weight values).
    """
    config: Any = copy.deepcopy(model.config)  # a transformers config: the reference is of a transformers model
    for attr in (PRUNED_HEADS_ATTR, PRUNED_NEURONS_ATTR):
        if hasattr(config, attr):
            setattr(config, attr, {})
    layout = find_layout(config)
    if layout is not None and getattr(config, PRUNED_LAYERS_ATTR, None):
        depth = int(getattr(config, layout.config_num_layers)) + len(removed_layers(config))
        if depth > MAX_REFERENCE_LAYERS:
            raise ValueError(
                f"The config records {depth} layers before `prune_layers`; the unpruned reference is limited to "
                f"{MAX_REFERENCE_LAYERS}. Pass a saved reference model instead (`reference=`, CLI --reference DIR)."
            )
        values = {**config.to_dict(), layout.config_num_layers: depth, PRUNED_LAYERS_ATTR: []}
        if "layer_types" in values:
            values["layer_types"] = None  # per-layer lists are rebuilt for the full depth by the config's defaults
        config = type(config).from_dict(values)
    return type(model)(config).eval()


def _inputs(model: nn.Module, batch_size: int, seq_len: int, seed: int) -> dict[str, torch.Tensor]:
    config: Any = model.config  # a transformers config: `measure_speed` times models that have one
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise ValueError(f"`seq_len`={seq_len} exceeds the model's max_position_embeddings ({limit}).")
    generator = torch.Generator().manual_seed(seed)
    low = min(4, config.vocab_size - 1)  # clear of the usual special tokens (pad, unk, cls, sep)
    return {
        "input_ids": torch.randint(low, config.vocab_size, (batch_size, seq_len), generator=generator),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
    }


def _flops(model: nn.Module, seq_len: int) -> int | None:
    if find_layout(getattr(model, "config", None)) is None:
        return None
    try:
        return encoder_matmul_flops(cast(PreTrainedModel, model), seq_len, 1)  # its config has a layout
    except AttributeError:  # a model of the family without the encoder blocks (nothing to count)
        return None


@torch.inference_mode()
def _time_alternated(
    models: dict[str, nn.Module], inputs: dict[str, torch.Tensor], repeats: int, warmup: int, min_time: float
) -> dict[str, float]:
    """Median seconds per forward pass of each model, run in alternation (the order flips every round)."""
    start = time.perf_counter()
    next(iter(models.values()))(**inputs)
    # Small batches loop so that one sample lasts `min_time` (timer resolution, Python overhead).
    inner = max(1, math.ceil(min_time / max(time.perf_counter() - start, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    for round_ in range(warmup + repeats):
        for name in order:
            start = time.perf_counter()
            for _ in range(inner):
                models[name](**inputs)
            if round_ >= warmup:
                samples[name].append((time.perf_counter() - start) / inner)
        order.reverse()
    return {name: statistics.median(values) for name, values in samples.items()}


def _thread_counts(threads: Iterable[int | str]) -> list[int]:
    counts: list[int] = []
    for t in threads:
        n = torch.get_num_threads() if t == ALL_THREADS else t
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"`threads` entries must be positive ints or {ALL_THREADS!r}, got {t!r}.")
        if n not in counts:
            counts.append(n)
    return counts


def measure_speed(
    model: nn.Module,
    reference: nn.Module | None = None,
    *,
    batch_sizes: Iterable[int] = (1, 32),
    seq_len: int = 128,
    threads: Iterable[int | str] = (1, ALL_THREADS),
    repeats: int = 10,
    warmup: int = 2,
    min_time: float = 0.05,
    seed: int = 0,
    label: str | None = None,
) -> SpeedReport:
    """
    Measure CPU inference latency of `model` (and of `reference`, alternated in the same process).

    For every thread count and batch size, both models run on the same random token ids (attention mask all ones),
    `warmup` untimed rounds then `repeats` timed rounds, the two models alternating and the order flipping every
    round so that neither always runs after the other; the median of each is kept. The FLOP ideal is the ratio of
    the matmul FLOPs of the transformer blocks (`hf_lottery.structured.encoder_matmul_flops`): what removing heads
    and neurons could give at best in fp32. int8 is not counted in it, so an int8 model's efficiency can exceed 1.

    Args:
        model (`nn.Module`): the model to time (pruned, exported, quantized), with a `config`.
        reference (`nn.Module`, *optional*): the model to compare with (typically the dense one).
        batch_sizes (`Iterable[int]`, *optional*, defaults to `(1, 32)`): batch sizes.
        seq_len (`int`, *optional*, defaults to 128): tokens per sequence.
        threads (`Iterable`, *optional*, defaults to `(1, "all")`): torch thread counts; `"all"` is the current
            `torch.get_num_threads()` (by default one per physical core). Restored afterwards.
        repeats (`int`, *optional*, defaults to 10): timed rounds.
        warmup (`int`, *optional*, defaults to 2): untimed rounds first.
        min_time (`float`, *optional*, defaults to 0.05): seconds a timed sample lasts at least (fast passes loop).
        seed (`int`, *optional*, defaults to 0): seed of the token ids.
        label (`str`, *optional*): recorded with the figures.

    Returns:
        [`SpeedReport`]: `report.figures` and the conditions; `report.to_dict()` for JSON.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"`repeats` must be >= 1 and `warmup` >= 0, got {repeats} and {warmup}.")
    counts = _thread_counts(threads)
    all_threads = torch.get_num_threads()
    models = {"model": model.eval()}
    if reference is not None:
        models["reference"] = reference.eval()
    model_flops = _flops(model, seq_len)
    reference_flops = _flops(reference, seq_len) if reference is not None else None
    ideal = reference_flops / model_flops if model_flops and reference_flops else None
    before = load_average()
    figures = []
    try:
        for n in counts:
            torch.set_num_threads(n)
            for batch in batch_sizes:
                inputs = _inputs(model, batch, seq_len, seed)
                medians = _time_alternated(models, inputs, repeats, warmup, min_time)
                ms = 1000 * medians["model"]
                ref_ms = 1000 * medians["reference"] if reference is not None else None
                speedup = ref_ms / ms if ref_ms is not None else None
                figures.append(
                    SpeedFigure(
                        threads=n,
                        batch_size=batch,
                        seq_len=seq_len,
                        latency_ms=ms,
                        reference_latency_ms=ref_ms,
                        speedup=speedup,
                        flop_ideal=ideal,
                        flop_efficiency=speedup / ideal if speedup is not None and ideal else None,
                    )
                )
    finally:
        torch.set_num_threads(all_threads)
    return SpeedReport(
        figures=figures,
        cpu=cpu_model(),
        torch_version=torch.__version__,
        all_threads=all_threads,
        repeats=repeats,
        load_average=before,
        load_average_after=load_average(),
        model_flops=model_flops,
        reference_flops=reference_flops,
        label=label,
        extra={"cpu_count": os.cpu_count()},
    )
