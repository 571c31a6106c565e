"""`load_glue`: a GLUE task as a `datasets.DatasetDict`, from the Hub or from the original files."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import datasets
import numpy as np

from .formats import LAYOUTS, describe_files
from .tasks import HUB_DATASET_ID, GlueTask, get_task
from .tsv import read_glue_tsv

logger = logging.getLogger(__name__)


def hub_features(task: str | GlueTask) -> datasets.Features:
    """
    The features of a task in the Hub dataset `nyu-mll/glue`.

    Args:
        task (`str` or [`GlueTask`]):
            Task name or task.

    Returns:
        `datasets.Features`: the text columns (`string`), `label` (`ClassLabel` with the Hub's names,
        or `float32` for STS-B) and `idx` (`int32`), in that order.
    """
    task = get_task(task)
    features = {column: datasets.Value("string") for column in task.text_columns}
    features["label"] = (
        datasets.Value("float32") if task.is_regression else datasets.ClassLabel(names=list(task.label_names))
    )
    features["idx"] = datasets.Value("int32")
    return datasets.Features(features)


def _task_folder(task: GlueTask, data_dir: Path) -> Path:
    """`data_dir/<folder>` (a GLUE download), or `data_dir` itself when it already is the task folder."""
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"GLUE data folder {str(data_dir)!r} does not exist. Expected a folder holding {task.folder}/ "
            f"with {describe_files(task)}."
        )
    nested = data_dir / task.folder
    if nested.is_dir():
        return nested
    if any((data_dir / layout.filename).is_file() for layout in LAYOUTS[task.name].values()):
        return data_dir
    raise FileNotFoundError(
        f"No {task.folder} data in {str(data_dir)!r}: expected a folder {str(nested)!r} (or {str(data_dir)!r} "
        f"itself) holding {describe_files(task)}."
    )


def _resolve_splits(task: GlueTask, splits: str | Iterable[str] | None) -> list[str] | None:
    if splits is None:
        return None
    splits = [splits] if isinstance(splits, str) else list(splits)
    unknown = [split for split in splits if split not in task.splits]
    if unknown:
        raise ValueError(
            f"Unknown split(s) {unknown} for GLUE task {task.name!r}. Its splits: {', '.join(task.splits)}."
        )
    return splits


def _load_from_folder(task: GlueTask, data_dir: Path, splits: list[str] | None) -> datasets.DatasetDict:
    folder = _task_folder(task, data_dir)
    layouts = LAYOUTS[task.name]
    wanted = splits if splits is not None else list(task.splits)
    features = hub_features(task)
    loaded = {}
    for split in wanted:
        layout = layouts[split]
        path = folder / layout.filename
        if not path.is_file():
            if splits is None and not layout.required:
                continue  # unlabelled test files are optional
            raise FileNotFoundError(
                f"GLUE file for split {split!r} of {task.name} not found: {str(path)!r}. "
                f"The {task.folder} folder should hold {describe_files(task)}."
            )
        columns = read_glue_tsv(path, layout, task)
        loaded[split] = datasets.Dataset.from_dict(columns, features=features, split=datasets.NamedSplit(split))
        logger.info("Read %d %s examples of %s from %s", len(loaded[split]), split, task.name, path)
    return datasets.DatasetDict(loaded)


def _load_from_hub(task: GlueTask, splits: list[str] | None) -> datasets.DatasetDict:
    dataset_dict = datasets.load_dataset(HUB_DATASET_ID, task.name)
    if splits is None:
        return dataset_dict
    return datasets.DatasetDict({split: dataset_dict[split] for split in splits})


def _subsample(
    dataset_dict: datasets.DatasetDict, max_samples: int | Mapping[str, int | None] | None, seed: int
) -> datasets.DatasetDict:
    if max_samples is None:
        return dataset_dict
    if isinstance(max_samples, Mapping):
        unknown = [split for split in max_samples if split not in dataset_dict]
        if unknown:
            raise ValueError(f"max_samples names split(s) {unknown} that are not loaded ({', '.join(dataset_dict)}).")
        limits = dict(max_samples)
    else:
        limits = dict.fromkeys(dataset_dict, max_samples)
    subsets = {}
    for split, dataset in dataset_dict.items():
        limit = limits.get(split)
        if limit is not None and limit < 0:
            raise ValueError(f"max_samples must be >= 0, got {limit} for split {split!r}.")
        if limit is None or limit >= len(dataset):
            subsets[split] = dataset
            continue
        # A seeded draw without replacement, kept in file order so subsets stay readable and stable.
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(len(dataset), size=limit, replace=False))
        subsets[split] = dataset.select(indices.tolist())
    return datasets.DatasetDict(subsets)


def load_glue(
    task: str | GlueTask,
    data_dir: str | os.PathLike | None = None,
    splits: str | Iterable[str] | None = None,
    max_samples: int | Mapping[str, int | None] | None = None,
    seed: int = 42,
) -> datasets.DatasetDict:
    """
    Load a GLUE task with the schema of the Hub dataset `nyu-mll/glue`.

    With `data_dir=None` the task is read from the Hub with `datasets.load_dataset("nyu-mll/glue", task)`.
    With a folder, the original GLUE files are parsed instead (no network): `data_dir` is either a
    GLUE download holding one folder per task (`SST-2/`, `CoLA/`, `MNLI/`, ...) or the task folder
    itself. Either way the result has the same columns in the same order (text columns, `label`,
    `idx`), the same features (`label` is a `ClassLabel` with the Hub's names, or `float32` for STS-B;
    `idx` is `int32`) and the same split names (`train`, `validation`, `test`; MNLI has
    `validation_matched`, `validation_mismatched`, `test_matched`, `test_mismatched`). Unlabelled
    test files get label -1, as on the Hub.

    Two differences from the Hub remain for MRPC, whose Hub copy is built from SentEval's tokenized
    text: the local files keep GLUE's untokenized sentences, and `idx` counts rows per file.

    Args:
        task (`str` or [`GlueTask`]):
            One of `cola`, `sst2`, `mrpc`, `stsb`, `qqp`, `mnli`, `qnli`, `rte`, `wnli`.
        data_dir (`str` or `os.PathLike`, *optional*):
            Folder with the original GLUE files; `None` loads from the Hub.
        splits (`str` or `Iterable[str]`, *optional*):
            Splits to load. By default: from the Hub every split; from a folder the train and
            validation splits (their files must exist) plus the test splits whose files exist.
            Explicitly named splits must all exist.
        max_samples (`int` or `Mapping[str, int]`, *optional*):
            Keep at most this many examples per split (one number for every split, or a number per
            split name). The subset is a seeded random draw kept in file order: the same `seed`
            gives the same examples.
        seed (`int`, defaults to 42):
            Seed of the `max_samples` draw.

    Returns:
        `datasets.DatasetDict`: one `Dataset` per split.

    Raises:
        `ValueError`: for an unknown task or split (the message lists the known ones).
        `FileNotFoundError`: when `data_dir` or a needed file is missing (naming the path and the files expected).
        [`~glue_tasks.tsv.GlueFormatError`]: for a malformed row (naming the file, the line and the problem).

    Example:

    ```python
    >>> from glue_tasks import load_glue, sample_dataset_dir
    >>> sst2 = load_glue("sst2", data_dir=sample_dataset_dir())
    >>> sst2["validation"].features["label"].names
    ['negative', 'positive']
    ```
    """
    task = get_task(task)
    split_list = _resolve_splits(task, splits)
    if data_dir is None:
        dataset_dict = _load_from_hub(task, split_list)
    else:
        dataset_dict = _load_from_folder(task, Path(data_dir), split_list)
    return _subsample(dataset_dict, max_samples, seed)
