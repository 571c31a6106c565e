"""
GLUE for hf_lottery: the nine tasks as data, loading from the Hub or the original files, the official
metrics offline, and the lottery-ticket hyperparameters of Chen et al. (2020) per task.

```python
from glue_tasks import TASKS, compute_metrics_fn, load_glue, load_recipe

sst2 = load_glue("sst2")                                 # Hub: nyu-mll/glue
sst2 = load_glue("sst2", data_dir="glue_data")           # original GLUE files, offline
compute_metrics = compute_metrics_fn("sst2")             # for transformers.Trainer
recipe = load_recipe("sst2")                             # learning_rate, target_sparsity, ...
```
"""

from .loading import hub_features, load_glue
from .metrics import GLUE_METRIC_PATH, compute_metrics_fn
from .recipes import load_recipe
from .sample import sample_dataset_dir
from .tasks import TASKS, GlueTask, get_task
from .tsv import GlueFormatError

__all__ = [
    "GLUE_METRIC_PATH",
    "GlueFormatError",
    "GlueTask",
    "TASKS",
    "compute_metrics_fn",
    "get_task",
    "hub_features",
    "load_glue",
    "load_recipe",
    "sample_dataset_dir",
]
