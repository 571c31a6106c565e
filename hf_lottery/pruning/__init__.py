"""Pruning entry points: `prune()` (scores -> mask with a registered method) and the controls (branches)."""
