"""Scoring methods for unstructured pruning, one module per method, one registry."""

from . import hydra, magnitude, random, synflow  # noqa: F401  (register the built-in methods)
from .registry import (
    ScoringMethod,
    ScoringSpec,
    get_scoring,
    register_scoring,
    registered_methods,
    scoring_kwargs_from_args,
    scoring_spec,
)

__all__ = [
    "ScoringMethod",
    "ScoringSpec",
    "get_scoring",
    "register_scoring",
    "registered_methods",
    "scoring_kwargs_from_args",
    "scoring_spec",
]
