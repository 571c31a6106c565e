"""The hyperparameters of Chen et al. (2020) for each GLUE task, shipped as JSON recipes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .tasks import GlueTask, get_task

RECIPE_DIR = Path(__file__).with_name("recipes")
"""Folder holding one `<task>.json` recipe per GLUE task."""

LOTTERY_KEYS = ("target_sparsity", "pruning_rate", "pruning_rate_of", "rewind", "pruning_scope", "pruning_method")
"""Recipe keys that are lottery arguments rather than `transformers.TrainingArguments` fields."""

DATA_KEYS = ("max_seq_length",)
"""Recipe keys that configure preprocessing rather than training."""


def load_recipe(task: str | GlueTask, include_source: bool = False) -> dict[str, Any]:
    """
    Load the hyperparameters of Chen et al. (2020) for a GLUE task.

    Every key is a `transformers.TrainingArguments` field (`learning_rate`,
    `per_device_train_batch_size`, `num_train_epochs`, ...), a lottery argument ([`LOTTERY_KEYS`]:
    `target_sparsity`, `pruning_rate`, `pruning_rate_of`, `rewind`, `pruning_scope`,
    `pruning_method`) or `max_seq_length`, so the recipe can be passed on as keyword arguments.
    `target_sparsity` is the winning-ticket sparsity the paper reports for BERT-base on that task.

    Args:
        task (`str` or [`GlueTask`]):
            Task name or task.
        include_source (`bool`, defaults to `False`):
            Also return the `"_source"` entry, which says where the values come from.

    Returns:
        `dict[str, Any]`: a fresh dictionary (changing it does not change later calls).

    Example:

    ```python
    >>> from glue_tasks import load_recipe
    >>> recipe = load_recipe("sst2")
    >>> recipe["target_sparsity"], recipe["learning_rate"], recipe["pruning_rate_of"]
    (0.6, 2e-05, 'original')
    ```
    """
    task = get_task(task)
    path = RECIPE_DIR / f"{task.name}.json"
    with open(path, encoding="utf-8") as f:
        recipe = json.load(f)
    if not include_source:
        recipe = {key: value for key, value in recipe.items() if not key.startswith("_")}
    return recipe
