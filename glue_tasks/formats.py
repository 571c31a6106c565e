"""Where each split of each task lives in the original GLUE download, and which columns it has."""

from __future__ import annotations

from dataclasses import dataclass, field

from .tasks import TASKS, GlueTask


@dataclass(frozen=True)
class FileLayout:
    """
    One original GLUE file and how to read the Hub columns out of it.

    Args:
        filename (`str`):
            File name inside the task folder, e.g. `"dev_matched.tsv"`.
        text_sources (`dict[str, str]`):
            Hub text column -> column of the file that holds it.
        label_source (`str`, *optional*):
            Column of the file holding the label; `None` for unlabelled test files (label -1).
        header (`tuple[str, ...]`, *optional*):
            Column names of a file without a header row (only CoLA's train and dev files); `None`
            when the first line of the file is its header.
        required (`bool`, defaults to `True`):
            Whether `load_glue` without explicit `splits` insists on the file (train and dev files
            do; test files are loaded only when present).
    """

    filename: str
    text_sources: dict[str, str] = field(hash=False)
    label_source: str | None
    header: tuple[str, ...] | None = None
    required: bool = True


# CoLA's train and dev files are the only ones without a header row (as in the `datasets` GLUE script).
_COLA_COLUMNS = ("source", "label", "original_label", "sentence")

# Text columns whose name in the original files differs from the Hub's.
_TEXT_SOURCES: dict[str, dict[str, str]] = {
    "mrpc": {"sentence1": "#1 String", "sentence2": "#2 String"},
    "mnli": {"premise": "sentence1", "hypothesis": "sentence2"},
}

_LABEL_SOURCES: dict[str, str] = {"mrpc": "Quality", "stsb": "score", "qqp": "is_duplicate", "mnli": "gold_label"}

# Split -> file name; MNLI has a matched and a mismatched version of dev and test.
_FILENAMES: dict[str, dict[str, str]] = {
    "mnli": {
        "train": "train.tsv",
        "validation_matched": "dev_matched.tsv",
        "validation_mismatched": "dev_mismatched.tsv",
        "test_matched": "test_matched.tsv",
        "test_mismatched": "test_mismatched.tsv",
    },
}
_DEFAULT_FILENAMES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}


def _layouts(task: GlueTask) -> dict[str, FileLayout]:
    text_sources = _TEXT_SOURCES.get(task.name, {column: column for column in task.text_columns})
    filenames = _FILENAMES.get(task.name, _DEFAULT_FILENAMES)
    layouts = {}
    for split in task.splits:
        is_test = split in task.test_splits
        layouts[split] = FileLayout(
            filename=filenames[split],
            text_sources=text_sources,
            label_source=None if is_test else _LABEL_SOURCES.get(task.name, "label"),
            header=_COLA_COLUMNS if task.name == "cola" and not is_test else None,
            required=not is_test,
        )
    return layouts


LAYOUTS: dict[str, dict[str, FileLayout]] = {name: _layouts(task) for name, task in TASKS.items()}
"""Task name -> split name -> [`FileLayout`] of the original GLUE file holding that split."""


def describe_files(task: GlueTask) -> str:
    """A one-line list of the files a task folder should hold, e.g. `train.tsv (train), dev.tsv (validation)`."""
    parts = []
    for split, layout in LAYOUTS[task.name].items():
        optional = "" if layout.required else ", optional"
        parts.append(f"{layout.filename} ({split}{optional})")
    return ", ".join(parts)
