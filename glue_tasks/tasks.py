"""The nine GLUE tasks described as data: columns, labels, splits and metrics."""

from __future__ import annotations

from dataclasses import dataclass

HUB_DATASET_ID = "nyu-mll/glue"
"""The Hub dataset that `load_glue` reads when no local folder is given."""


@dataclass(frozen=True)
class GlueTask:
    """
    One GLUE task: what its examples look like and how it is scored.

    Column, label and split names are exactly those of the Hub dataset `nyu-mll/glue`, so a dataset
    loaded from the Hub and one parsed from the original GLUE files are interchangeable.

    Args:
        name (`str`):
            Task name as used on the Hub and by the `glue` metric of `evaluate` (e.g. `"sst2"`).
        folder (`str`):
            Name of the task's folder in the original GLUE download (e.g. `"SST-2"`).
        text_columns (`tuple[str, ...]`):
            One or two text columns, in the order they are fed to a tokenizer.
        label_names (`tuple[str, ...]`):
            Class names in label-id order (empty for the regression task STS-B).
        num_labels (`int`):
            Number of model outputs: the number of classes, or 1 for regression.
        is_regression (`bool`):
            Whether the label is a float score (STS-B) rather than a class id.
        metric_names (`tuple[str, ...]`):
            Keys returned by the task's metric, as in `evaluate.load("glue", name)`.
        main_metric (`str`):
            The metric reported for the task (model card, sparsity plot), following Chen et al. (2020).
        validation_splits (`tuple[str, ...]`):
            Names of the validation splits (two for MNLI: matched and mismatched).
        test_splits (`tuple[str, ...]`):
            Names of the unlabelled test splits.
    """

    name: str
    folder: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...]
    num_labels: int
    is_regression: bool
    metric_names: tuple[str, ...]
    main_metric: str
    validation_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("test",)
    train_split: str = "train"

    @property
    def splits(self) -> tuple[str, ...]:
        """All split names of the task, in Hub order."""
        return (self.train_split, *self.validation_splits, *self.test_splits)

    @property
    def id2label(self) -> dict[int, str]:
        """Mapping from class id to class name, for a model config (empty for regression)."""
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        """Mapping from class name to class id, for a model config (empty for regression)."""
        return {name: i for i, name in enumerate(self.label_names)}


def _classification(
    name: str,
    folder: str,
    text_columns: tuple[str, ...],
    label_names: tuple[str, ...],
    metric_names: tuple[str, ...] = ("accuracy",),
    main_metric: str = "accuracy",
    validation_splits: tuple[str, ...] = GlueTask.validation_splits,
    test_splits: tuple[str, ...] = GlueTask.test_splits,
) -> GlueTask:
    return GlueTask(
        name=name,
        folder=folder,
        text_columns=text_columns,
        label_names=label_names,
        num_labels=len(label_names),
        is_regression=False,
        metric_names=metric_names,
        main_metric=main_metric,
        validation_splits=validation_splits,
        test_splits=test_splits,
    )


# Label orders are the Hub's (they differ between tasks: RTE/QNLI put "entailment" first, WNLI last).
# Main metrics follow the evaluation metrics of Chen et al. (2020): accuracy (MNLI: matched accuracy)
# except Matthews correlation for CoLA and Pearson correlation for STS-B.
TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        _classification(
            "cola",
            "CoLA",
            ("sentence",),
            ("unacceptable", "acceptable"),
            metric_names=("matthews_correlation",),
            main_metric="matthews_correlation",
        ),
        _classification("sst2", "SST-2", ("sentence",), ("negative", "positive")),
        _classification(
            "mrpc",
            "MRPC",
            ("sentence1", "sentence2"),
            ("not_equivalent", "equivalent"),
            metric_names=("accuracy", "f1"),
        ),
        GlueTask(
            name="stsb",
            folder="STS-B",
            text_columns=("sentence1", "sentence2"),
            label_names=(),
            num_labels=1,
            is_regression=True,
            metric_names=("pearson", "spearmanr"),
            main_metric="pearson",
        ),
        _classification(
            "qqp",
            "QQP",
            ("question1", "question2"),
            ("not_duplicate", "duplicate"),
            metric_names=("accuracy", "f1"),
        ),
        _classification(
            "mnli",
            "MNLI",
            ("premise", "hypothesis"),
            ("entailment", "neutral", "contradiction"),
            validation_splits=("validation_matched", "validation_mismatched"),
            test_splits=("test_matched", "test_mismatched"),
        ),
        _classification("qnli", "QNLI", ("question", "sentence"), ("entailment", "not_entailment")),
        _classification("rte", "RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment")),
        _classification("wnli", "WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment")),
    )
}
"""The nine GLUE tasks by name: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli."""


def get_task(task: str | GlueTask) -> GlueTask:
    """
    Look up a GLUE task by name.

    Args:
        task (`str` or [`GlueTask`]):
            A task name such as `"sst2"` (case-insensitive; `"sst-2"` and `"sts-b"` are accepted too),
            or a task, returned as is.

    Returns:
        [`GlueTask`]: the task.

    Raises:
        `ValueError`: if the name is not one of the nine GLUE tasks; the message lists them.
    """
    if isinstance(task, GlueTask):
        return task
    key = str(task).lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"Unknown GLUE task {task!r}. Known tasks: {', '.join(TASKS)}.")
    return TASKS[key]
