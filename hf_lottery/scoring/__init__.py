"""Scoring methods for unstructured pruning, one module per method, one registry."""

from . import magnitude, random  # noqa: F401  (register the built-in methods)
from .registry import ScoringMethod, get_scoring, register_scoring, registered_methods

__all__ = ["ScoringMethod", "get_scoring", "register_scoring", "registered_methods"]
