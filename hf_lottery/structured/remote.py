"""Remote code for shrunk checkpoints: a self-contained modeling file plus `auto_map` in config.json.

The file is assembled from the sources of `layouts.py` and `shrink.py` (which depend on torch and transformers
only) followed by one thin subclass per Auto class of the family: each subclass builds the stock model, then
shrinks it to `config.pruned_heads` / `config.pruned_neurons` before weights load. A Python without hf_lottery loads
the folder with `AutoModelFor...from_pretrained(folder, trust_remote_code=True)`.
"""

from __future__ import annotations

import ast
import inspect
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel
from transformers.models.auto import modeling_auto
from transformers.utils import logging

from ..constants import STRUCTURED_MODELING_FILE
from . import channels, conv_layouts, layouts, shrink, stripes

logger = logging.get_logger(__name__)

# Auto classes written into `auto_map`, with the transformers table that names each family's class.
AUTO_CLASS_TABLES = {
    "AutoModel": "MODEL_MAPPING_NAMES",
    "AutoModelForPreTraining": "MODEL_FOR_PRETRAINING_MAPPING_NAMES",
    "AutoModelForMaskedLM": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "AutoModelForCausalLM": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "AutoModelForSequenceClassification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForTokenClassification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForQuestionAnswering": "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
    "AutoModelForMultipleChoice": "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES",
    "AutoModelForNextSentencePrediction": "MODEL_FOR_NEXT_SENTENCE_PREDICTION_MAPPING_NAMES",
    "AutoModelForTextEncoding": "MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES",
    "AutoModelForImageClassification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
}

_HEADER = '''"""Structured pruning support for {family} checkpoints whose blocks lost attention heads or FFN neurons.

Written by hf_lottery {version} beside the weights so that this folder loads where hf_lottery is not installed:
`AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)` (any Auto class listed in
`auto_map`). Each class below is the stock transformers class, shrunk to `config.pruned_heads` and
`config.pruned_neurons` (original indices removed per layer) before the weights are loaded. Needs torch and
transformers only.
"""

from __future__ import annotations
'''

_CLASSES = """

# ---------------------------------------------------------------------------------------------------------------------
# Model classes
import transformers as _transformers  # noqa: E402


def _with_structure(base):
    class Structured(base):
        def post_init(self):
            super().post_init()
{apply_calls}

    Structured.__name__ = Structured.__qualname__ = base.__name__
    Structured.__module__ = __name__
    Structured.__doc__ = f"`{{base.__name__}}` shrunk to the {what} recorded in its config."
    return Structured


{assignments}
"""


def _module_body(module: Any) -> str:
    """A module's source without its docstring, `from __future__` line and package-relative imports."""
    source = inspect.getsource(module)
    tree = ast.parse(source)
    lines = source.splitlines()
    drop: set[int] = set()
    for node in tree.body:
        is_docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node is tree.body[0]
        is_future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        is_relative = isinstance(node, ast.ImportFrom) and node.level > 0
        if is_docstring or is_future or is_relative:
            assert node.end_lineno is not None  # ast.parse sets it on every statement
            drop.update(range(node.lineno - 1, node.end_lineno))
    return "\n".join(line for i, line in enumerate(lines) if i not in drop).strip() + "\n"


def auto_class_names(model_type: str, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """
    `{Auto class: model class}` for every Auto class that maps `model_type`, e.g.
    `{"AutoModelForSequenceClassification": "BertForSequenceClassification", ...}`.

    Args:
        model_type (`str`):
            `config.model_type`.
        extra (`tuple[str, ...]`, *optional*):
            Further transformers class names to define in the modeling file (keyed by their own name).
    """
    import transformers

    result: dict[str, str] = {}
    for auto_class, table in AUTO_CLASS_TABLES.items():
        name = getattr(modeling_auto, table, {}).get(model_type)
        if isinstance(name, str) and hasattr(transformers, name):
            result[auto_class] = name
    for name in extra:
        if hasattr(transformers, name) and name not in result.values():
            result[name] = name
    return result


def _library_version() -> str:
    try:
        return version("hf-lottery")
    except PackageNotFoundError:  # a source checkout
        return "(source)"


def _class_assignments(class_names: list[str] | tuple[str, ...]) -> str:
    return "\n".join(f"{n} = _with_structure(_transformers.{n})" for n in sorted(set(class_names)))


def modeling_source(family: str, class_names: list[str] | tuple[str, ...]) -> str:
    """
    The text of the self-contained modeling file defining `class_names` (transformers class names).

    Args:
        family (`str`):
            Family name, used in the docstring.
        class_names (`list[str]`):
            transformers model classes to wrap.
    """
    return (
        _HEADER.format(family=family, version=_library_version())
        + "\n"
        + _module_body(layouts)
        + "\n\n"
        + _module_body(shrink)
        + _CLASSES.format(
            assignments=_class_assignments(class_names),
            apply_calls="            apply_config_structure_(self)",
            what="heads and neurons",
        )
    )


_CONV_HEADER = '''"""Support for {family} checkpoints whose conv blocks lost inner channels or whose convs lost stripes.

Written by hf_lottery {version} beside the weights so that this folder loads where hf_lottery is not installed:
`AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)` (any Auto class listed in
`auto_map`). Each class below is the stock transformers class, shrunk to `config.pruned_channels` and with the convs
of `config.pruned_stripes` in their stripe-wise form, before the weights are loaded. Needs torch and transformers only.
"""

from __future__ import annotations
'''


def conv_modeling_source(family: str, class_names: list[str] | tuple[str, ...]) -> str:
    """
    The text of the self-contained modeling file for conv nets that lost channels or stripes.

    Args:
        family (`str`):
            Family name, used in the docstring.
        class_names (`list[str]`):
            transformers model classes to wrap.
    """
    calls = "            apply_config_channels_(self)\n            apply_config_stripes_(self)"
    return (
        _CONV_HEADER.format(family=family, version=_library_version())
        + "\n"
        + "\n\n".join(_module_body(module) for module in (conv_layouts, channels, stripes))
        + _CLASSES.format(assignments=_class_assignments(class_names), apply_calls=calls, what="channels and stripes")
    )


def has_conv_structure(model: PreTrainedModel) -> bool:
    """Whether `model.config` records removed conv channels or stripes."""
    config = getattr(model, "config", None)
    return bool(
        getattr(config, channels.PRUNED_CHANNELS_ATTR, None) or getattr(config, stripes.PRUNED_STRIPES_ATTR, None)
    )


def has_structure(model: PreTrainedModel) -> bool:
    """Whether `model.config` records removed heads or neurons."""
    config = getattr(model, "config", None)
    return bool(getattr(config, shrink.PRUNED_HEADS_ATTR, None) or getattr(config, shrink.PRUNED_NEURONS_ATTR, None))


def _is_plain_family_model(model: PreTrainedModel) -> bool:
    # Our remote classes, or the stock transformers ones: never overwrite another project's custom code.
    module = type(model).__module__
    return module.startswith("transformers.models.") or module.endswith(Path(STRUCTURED_MODELING_FILE).stem)


def prepare_auto_map(model: PreTrainedModel) -> dict[str, str] | None:
    """
    Point `model.config.auto_map` at the structured modeling file (before the config is written).

    Returns:
        `dict[str, str] | None`: the Auto classes to define, or `None` when the model needs no remote code.
    """
    layout = layouts.find_layout(model.config)
    conv = has_conv_structure(model)
    if not conv and (layout is None or not has_structure(model)):
        return None
    if not _is_plain_family_model(model):
        logger.warning(
            f"{type(model).__name__} is custom code; the structured modeling file is not written (load this "
            "checkpoint with hf_lottery imported)."
        )
        return None
    names = auto_class_names(model.config.model_type, extra=(type(model).__name__,))
    stem = Path(STRUCTURED_MODELING_FILE).stem
    auto_map = dict(getattr(model.config, "auto_map", None) or {})
    auto_map.update({auto_class: f"{stem}.{name}" for auto_class, name in names.items()})
    model.config.auto_map = auto_map
    return names


def write_modeling_file(model: PreTrainedModel, save_directory: str | os.PathLike, names: dict[str, str]) -> Path:
    """
    Write the self-contained modeling file into `save_directory`.

    Args:
        model (`PreTrainedModel`):
            The model being saved.
        save_directory (`str` or `os.PathLike`):
            The checkpoint folder.
        names (`dict[str, str]`):
            As returned by [`prepare_auto_map`].

    Returns:
        `Path`: the file written.
    """
    path = Path(save_directory) / STRUCTURED_MODELING_FILE
    if has_conv_structure(model):
        source = conv_modeling_source(model.config.model_type, list(names.values()))
    else:
        source = modeling_source(layouts.get_layout(model.config).name, list(names.values()))
    path.write_text(source, encoding="utf-8")
    return path
