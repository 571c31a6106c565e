"""CPU deployment: compact a structurally pruned model, quantize its Linears to int8, measure and record its speed."""

from .export import (
    compact_for_inference,
    dead_groups,
    export_for_cpu,
    load_for_cpu,
    read_export_config,
    write_speed_card,
)
from .quantize import BACKEND_PREFERENCE, BACKENDS, available_backends, quantizable_linears, quantize_linears_
from .speed import SpeedFigure, SpeedReport, cpu_model, load_average, measure_speed, unpruned_reference

__all__ = [
    "BACKENDS",
    "BACKEND_PREFERENCE",
    "SpeedFigure",
    "SpeedReport",
    "available_backends",
    "compact_for_inference",
    "cpu_model",
    "dead_groups",
    "export_for_cpu",
    "load_average",
    "load_for_cpu",
    "measure_speed",
    "quantizable_linears",
    "quantize_linears_",
    "read_export_config",
    "unpruned_reference",
    "write_speed_card",
]
