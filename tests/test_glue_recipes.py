"""`glue_tasks` recipes: the hyperparameters of Chen et al. (2020), one JSON file per task."""

from __future__ import annotations

import dataclasses
import json

import pytest
from transformers import TrainingArguments

from glue_tasks import TASKS, load_recipe
from glue_tasks.recipes import DATA_KEYS, LOTTERY_KEYS, RECIPE_DIR

# Winning-ticket sparsity Chen et al. (2020) report for BERT-base.
PAPER_SPARSITY = {
    "mnli": 0.7,
    "qqp": 0.9,
    "stsb": 0.5,
    "wnli": 0.9,
    "qnli": 0.7,
    "mrpc": 0.5,
    "rte": 0.6,
    "sst2": 0.6,
    "cola": 0.5,
}
TRAINING_FIELDS = {field.name for field in dataclasses.fields(TrainingArguments)}


def test_one_recipe_per_task():
    assert sorted(path.stem for path in RECIPE_DIR.glob("*.json")) == sorted(TASKS)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_recipe_values(task):
    recipe = load_recipe(task)
    assert set(recipe) <= TRAINING_FIELDS | set(LOTTERY_KEYS) | set(DATA_KEYS)
    assert set(LOTTERY_KEYS) <= set(recipe)
    assert recipe["target_sparsity"] == PAPER_SPARSITY[task]
    assert recipe["learning_rate"] == 2e-5
    assert recipe["per_device_train_batch_size"] == 32
    assert recipe["num_train_epochs"] == 3
    assert recipe["max_seq_length"] == 128
    assert recipe["pruning_rate"] == 0.1
    assert recipe["pruning_rate_of"] == "original"
    assert recipe["rewind"] == "pretrained"
    assert recipe["pruning_scope"] == "global"
    assert recipe["pruning_method"] == "magnitude"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_recipe_records_its_source(task):
    assert "_source" not in load_recipe(task)
    source = load_recipe(task, include_source=True)["_source"]
    assert "Chen et al." in source and "BERT-Tickets" in source
    assert f"{round(PAPER_SPARSITY[task] * 100)}%" in source
    with open(RECIPE_DIR / f"{task}.json", encoding="utf-8") as f:
        assert json.load(f) == load_recipe(task, include_source=True)


def test_recipe_builds_training_arguments(tmp_path):
    recipe = load_recipe("sst2")
    training = {key: value for key, value in recipe.items() if key in TRAINING_FIELDS}
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **training)
    assert args.learning_rate == 2e-5
    assert args.per_device_train_batch_size == 32


def test_recipe_is_a_fresh_copy():
    load_recipe("rte")["learning_rate"] = 1.0
    assert load_recipe("rte")["learning_rate"] == 2e-5


def test_unknown_recipe():
    with pytest.raises(ValueError, match="Unknown GLUE task"):
        load_recipe("squad")
