"""The official GLUE metrics, computed with scikit-learn and scipy (no network, no `evaluate` import)."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

GLUE_CONFIGS = (
    "sst2",
    "mnli",
    "mnli_mismatched",
    "mnli_matched",
    "cola",
    "stsb",
    "mrpc",
    "qqp",
    "qnli",
    "rte",
    "wnli",
    "hans",
)
"""Configuration names accepted by the `glue` metric of `evaluate`, and by this one."""


def glue_scores(config_name: str, predictions, references) -> dict[str, float]:
    """
    Score predictions as the `glue` metric of `evaluate` does, with the same keys.

    Args:
        config_name (`str`):
            One of [`GLUE_CONFIGS`].
        predictions (array-like):
            Predicted class ids, or predicted scores for `stsb`.
        references (array-like):
            Gold class ids, or gold scores for `stsb`.

    Returns:
        `dict[str, float]`: `matthews_correlation` (cola); `pearson` and `spearmanr` (stsb);
        `accuracy` and `f1` (mrpc, qqp); `accuracy` (every other task).

    Raises:
        `KeyError`: for an unknown configuration name.
    """
    predictions = np.asarray(predictions)
    references = np.asarray(references)
    if config_name == "cola":
        return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
    if config_name == "stsb":
        return {
            "pearson": float(pearsonr(predictions, references)[0]),
            "spearmanr": float(spearmanr(predictions, references)[0]),
        }
    if config_name in ("mrpc", "qqp"):
        return {
            "accuracy": float((predictions == references).mean()),
            "f1": float(f1_score(y_true=references, y_pred=predictions)),
        }
    if config_name in GLUE_CONFIGS:
        return {"accuracy": float((predictions == references).mean())}
    raise KeyError(f"Unknown GLUE metric configuration {config_name!r}. Known: {', '.join(GLUE_CONFIGS)}.")
