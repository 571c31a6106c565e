"""
A local copy of the GLUE metric for `evaluate`, usable offline.

Load it by path (it reads `glue_formulas.py` beside it):

```python
import evaluate
from glue_tasks.metrics import GLUE_METRIC_PATH

metric = evaluate.load(GLUE_METRIC_PATH, config_name="mrpc")
metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])  # {'accuracy': 0.666..., 'f1': 0.666...}
```
"""

import datasets
import evaluate

from .glue_formulas import GLUE_CONFIGS, glue_scores

_CITATION = """\
@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  note={In the Proceedings of ICLR.},
  year={2019}
}
"""

_DESCRIPTION = """\
GLUE, the General Language Understanding Evaluation benchmark (https://gluebenchmark.com/), scored
as the `glue` metric of `evaluate` scores it, with the same configuration names and result keys,
computed locally with scikit-learn and scipy.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class ids, or predicted scores for `stsb`.
    references: gold class ids, or gold scores for `stsb`.
Returns:
    accuracy (all tasks but cola and stsb), f1 (mrpc, qqp), pearson and spearmanr (stsb),
    matthews_correlation (cola).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Glue(evaluate.Metric):
    """The GLUE metric: one configuration per task (`config_name="sst2"`, `"mrpc"`, ...)."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in GLUE_CONFIGS:
            raise KeyError(f"Unknown GLUE configuration {self.config_name!r}. Known: {', '.join(GLUE_CONFIGS)}.")
        dtype = "float32" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}),
            codebase_urls=[],
            reference_urls=["https://gluebenchmark.com/"],
            format="numpy",
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        return glue_scores(self.config_name, predictions, references)
