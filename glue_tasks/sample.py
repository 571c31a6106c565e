"""The small SST-2 sample shipped inside the package, for demos and offline tests."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SAMPLE_DIR_NAME = "sst2_sample"


def sample_dataset_dir() -> Path:
    """
    Folder of the SST-2 sample shipped with `glue_tasks`, in the layout of a GLUE download.

    It holds `SST-2/train.tsv` (a fixed random draw of 3,000 of the 67,349 training sentences) and
    `SST-2/dev.tsv` (the full 872-sentence dev set); its `SOURCES.md` says where they come from and
    how they were sampled.

    Returns:
        `pathlib.Path`: the folder, to pass as `data_dir` to [`load_glue`].

    Example:

    ```python
    >>> from glue_tasks import load_glue, sample_dataset_dir
    >>> {split: len(ds) for split, ds in load_glue("sst2", data_dir=sample_dataset_dir()).items()}
    {'train': 3000, 'validation': 872}
    ```
    """
    folder = Path(str(resources.files("glue_tasks").joinpath("data", SAMPLE_DIR_NAME)))
    if not folder.is_dir():
        raise FileNotFoundError(f"The SST-2 sample is missing from this installation of glue_tasks: {folder}")
    return folder
