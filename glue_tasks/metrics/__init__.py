"""GLUE metrics: a `compute_metrics` for `transformers.Trainer` and a local `evaluate` module."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..tasks import GlueTask, get_task
from .glue_formulas import GLUE_CONFIGS, glue_scores

GLUE_METRIC_PATH = str(Path(__file__).with_name("glue_metric.py"))
"""Path of the local `evaluate` metric module: `evaluate.load(GLUE_METRIC_PATH, config_name="sst2")`."""

__all__ = ["GLUE_CONFIGS", "GLUE_METRIC_PATH", "compute_metrics_fn", "glue_scores"]


def compute_metrics_fn(task: str | GlueTask) -> Callable[..., dict[str, float]]:
    """
    Build the `compute_metrics` function of a GLUE task for `transformers.Trainer`.

    The returned function takes an `EvalPrediction` (or a `(predictions, label_ids)` pair), turns
    logits into predictions (argmax over the last axis for classification, squeeze for the
    regression task STS-B) and returns the official GLUE metrics, with the keys of
    `evaluate.load("glue", task)`: `accuracy`; `accuracy` and `f1` for MRPC and QQP;
    `matthews_correlation` for CoLA; `pearson` and `spearmanr` for STS-B. It computes them with the
    same code as the local `evaluate` module at [`GLUE_METRIC_PATH`], without the network.

    Args:
        task (`str` or [`GlueTask`]):
            Task name or task.

    Returns:
        `Callable[[EvalPrediction], dict[str, float]]`: the metric function.

    Example:

    ```python
    >>> import numpy as np
    >>> from transformers import EvalPrediction
    >>> from glue_tasks import compute_metrics_fn
    >>> compute_metrics = compute_metrics_fn("mrpc")
    >>> compute_metrics(EvalPrediction(predictions=np.array([[0.1, 0.9], [2.0, -1.0]]), label_ids=np.array([1, 1])))
    {'accuracy': 0.5, 'f1': 0.6666666666666666}
    ```
    """
    task = get_task(task)

    def compute_metrics(eval_prediction) -> dict[str, float]:
        if hasattr(eval_prediction, "predictions"):
            predictions, label_ids = eval_prediction.predictions, eval_prediction.label_ids
        else:
            predictions, label_ids = eval_prediction
        if isinstance(predictions, tuple):  # models that also return hidden states or attentions
            predictions = predictions[0]
        predictions = np.asarray(predictions)
        if task.is_regression:
            predictions = predictions.reshape(-1)
        elif predictions.ndim > 1:
            predictions = predictions.argmax(axis=-1)
        return glue_scores(task.name, predictions, np.asarray(label_ids).reshape(-1))

    compute_metrics.__name__ = f"compute_{task.name}_metrics"
    return compute_metrics
