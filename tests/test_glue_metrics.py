"""`glue_tasks` metrics: `compute_metrics_fn` against scikit-learn/scipy, and the local `evaluate` module."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from transformers import EvalPrediction

from glue_tasks import TASKS, compute_metrics_fn
from glue_tasks.metrics import GLUE_CONFIGS, GLUE_METRIC_PATH, glue_scores

# The result keys of `evaluate.load("glue", task)`, written out independently.
GLUE_KEYS = {
    "cola": {"matthews_correlation"},
    "sst2": {"accuracy"},
    "mrpc": {"accuracy", "f1"},
    "stsb": {"pearson", "spearmanr"},
    "qqp": {"accuracy", "f1"},
    "mnli": {"accuracy"},
    "qnli": {"accuracy"},
    "rte": {"accuracy"},
    "wnli": {"accuracy"},
}


def _random_eval(task: str, n: int = 200, seed: int = 0) -> EvalPrediction:
    rng = np.random.default_rng(seed)
    if TASKS[task].is_regression:
        labels = rng.uniform(0, 5, size=n).astype(np.float32)
        predictions = (labels + rng.normal(0, 1.5, size=n)).astype(np.float32)[:, None]  # (n, 1) as a model returns
    else:
        labels = rng.integers(0, TASKS[task].num_labels, size=n)
        predictions = rng.normal(size=(n, TASKS[task].num_labels)).astype(np.float32)
        predictions[np.arange(n), labels] += rng.uniform(0, 1.5, size=n)  # better than chance, not perfect
    return EvalPrediction(predictions=predictions, label_ids=labels)


def _reference(task: str, eval_prediction: EvalPrediction) -> dict[str, float]:
    labels = eval_prediction.label_ids
    if task == "stsb":
        predictions = eval_prediction.predictions[:, 0]
        return {"pearson": pearsonr(predictions, labels)[0], "spearmanr": spearmanr(predictions, labels)[0]}
    predictions = eval_prediction.predictions.argmax(axis=-1)
    if task == "cola":
        return {"matthews_correlation": matthews_corrcoef(labels, predictions)}
    result = {"accuracy": accuracy_score(labels, predictions)}
    if task in ("mrpc", "qqp"):
        result["f1"] = f1_score(labels, predictions)
    return result


@pytest.mark.parametrize("task", sorted(TASKS))
def test_compute_metrics_matches_sklearn_and_scipy(task):
    eval_prediction = _random_eval(task)
    result = compute_metrics_fn(task)(eval_prediction)
    assert set(result) == GLUE_KEYS[task]
    assert set(result) == set(TASKS[task].metric_names)
    assert all(isinstance(value, float) for value in result.values())
    assert result == pytest.approx(_reference(task, eval_prediction), abs=1e-6)


@pytest.mark.parametrize("task", ["mrpc", "stsb"])
def test_compute_metrics_accepts_tuples(task):
    eval_prediction = _random_eval(task, seed=1)
    compute_metrics = compute_metrics_fn(task)
    expected = compute_metrics(eval_prediction)
    # A (predictions, label_ids) pair, and predictions that carry extra model outputs.
    assert compute_metrics((eval_prediction.predictions, eval_prediction.label_ids)) == expected
    extra = EvalPrediction(predictions=(eval_prediction.predictions, np.zeros(3)), label_ids=eval_prediction.label_ids)
    assert compute_metrics(extra) == expected


def test_compute_metrics_accepts_class_ids():
    # With `preprocess_logits_for_metrics` the Trainer may already pass class ids.
    labels = np.array([0, 1, 1, 0])
    result = compute_metrics_fn("mrpc")(EvalPrediction(predictions=np.array([0, 1, 0, 0]), label_ids=labels))
    assert result == pytest.approx({"accuracy": 0.75, "f1": 2 / 3})


def test_compute_metrics_known_values():
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 1.0], [3.0, 0.0]])
    result = compute_metrics_fn("cola")(EvalPrediction(predictions=logits, label_ids=np.array([1, 0, 1, 0])))
    assert result == {"matthews_correlation": 1.0}


def test_compute_metrics_unknown_task():
    with pytest.raises(ValueError, match="Unknown GLUE task"):
        compute_metrics_fn("squad")


def test_glue_scores_unknown_config():
    with pytest.raises(KeyError, match="hans"):
        glue_scores("ax", [0], [0])


@pytest.fixture(scope="module")
def load_local_metric():
    evaluate = pytest.importorskip("evaluate")
    return lambda config_name: evaluate.load(GLUE_METRIC_PATH, config_name=config_name)


@pytest.mark.parametrize("config_name", sorted(TASKS) + ["mnli_matched", "mnli_mismatched"])
def test_local_evaluate_module_agrees(load_local_metric, config_name):
    task = config_name.split("_")[0]
    eval_prediction = _random_eval(task, seed=2)
    expected = compute_metrics_fn(task)(eval_prediction)
    predictions = eval_prediction.predictions
    predictions = predictions[:, 0] if task == "stsb" else predictions.argmax(axis=-1)
    result = load_local_metric(config_name).compute(predictions=predictions, references=eval_prediction.label_ids)
    assert result == pytest.approx(expected, abs=1e-6)
    assert result == pytest.approx(_reference(task, eval_prediction), abs=1e-6)


def test_local_evaluate_module_rejects_unknown_config(load_local_metric):
    with pytest.raises(KeyError, match="Unknown GLUE configuration"):
        load_local_metric("squad")


def test_local_evaluate_module_knows_the_glue_configs():
    assert set(GLUE_KEYS) <= set(GLUE_CONFIGS)
