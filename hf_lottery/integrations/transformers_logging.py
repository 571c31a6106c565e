"""hf_lottery's loggers follow the verbosity of transformers.

`transformers.logging.set_verbosity_info()` and `TrainingArguments(log_level="info")` set the level of the
`transformers` logger only; a logger outside that tree keeps Python's default (warnings only), so "Lottery round
..." would never show. Making `transformers` the parent of the `hf_lottery` logger lets every `hf_lottery.*`
logger take the level and the handler of transformers, without renaming the loggers.
"""

from __future__ import annotations

import logging as pylogging

from transformers.utils import logging

LIBRARY_LOGGER_NAME = "hf_lottery"


def follow_transformers_verbosity() -> None:
    """Attach the `hf_lottery` logger under the `transformers` library logger (level and handler inherited)."""
    library_logger = pylogging.getLogger(LIBRARY_LOGGER_NAME)
    library_logger.parent = pylogging.getLogger(logging.get_logger("transformers").name)
    library_logger.setLevel(pylogging.NOTSET)
