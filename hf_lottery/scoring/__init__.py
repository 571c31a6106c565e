"""Scoring methods for unstructured pruning, one module per method, one registry."""

from . import hydra, magnitude, random, sparsegpt, synflow, wanda  # noqa: F401  (register the built-in methods)
from .registry import (
    ScoringMethod,
    ScoringSpec,
    get_scoring,
    register_scoring,
    registered_methods,
    scoring_kwargs_from_args,
    scoring_spec,
)
from .sparsegpt import load_reconstruction_, sparsegpt_update

__all__ = [
    "ScoringMethod",
    "ScoringSpec",
    "get_scoring",
    "load_reconstruction_",
    "register_scoring",
    "registered_methods",
    "scoring_kwargs_from_args",
    "scoring_spec",
    "sparsegpt_update",
]
