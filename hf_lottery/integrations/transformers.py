"""Loading and saving shrunk models through the stock `from_pretrained` / `save_pretrained`.

`import hf_lottery` calls [`install_hooks`] (one visible line in its `__init__`), which wraps three `PreTrainedModel` methods:

- `post_init` (run at the end of every model's `__init__`, inside `from_pretrained` before any weight is loaded):
  when the config records `pruned_heads` / `pruned_neurons` and the family has a layout, the freshly built skeleton
  is shrunk to that structure, so the checkpoint's tensors fit exactly (no `ignore_mismatched_sizes`, no newly
  initialised weights); conv nets likewise lose the inner channels of `config.pruned_channels` and turn the convs of
  `config.pruned_stripes` into stripe-wise convs. This is what transformers 4 did with `config.pruned_heads` in `init_weights`, so checkpoints
  pruned with transformers 4 load the same way.
- `save_pretrained`: for a shrunk model, `config.auto_map` points every Auto class of the family at a
  self-contained modeling file, written beside the weights, so the folder also loads where hf_lottery is not
  installed (`trust_remote_code=True`).

- `from_pretrained`: a structure record that does not describe the architecture (an index out of range, a
  duplicate, a layer beyond the depth, ...) raises [`StructureRecordError`] naming the config file, before any
  weight is read.

The wrappers are no-ops for models whose config records no structure.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from transformers import PreTrainedModel
from transformers.utils import CONFIG_NAME, logging

from ..structured.channels import apply_config_channels_
from ..structured.layouts import find_layout
from ..structured.remote import prepare_auto_map, write_modeling_file
from ..structured.shrink import apply_config_structure_
from ..structured.stripes import apply_config_stripes_
from ..structured.surgery import PRUNED_LAYERS_ATTR, removed_layers

logger = logging.get_logger(__name__)

_ORIGINALS: dict[str, Any] = {}


class StructureRecordError(ValueError):
    """
    A config's record of what was removed (`pruned_heads`, `pruned_neurons`, `pruned_layers`, `pruned_channels`,
    `pruned_stripes`) does not fit the architecture it describes. Raised by `from_pretrained` naming the config file,
    and by building a model from such a config; the message says which entry is wrong and what is valid.
    """


def _apply_records(model: PreTrainedModel) -> None:
    config = getattr(model, "config", None)
    if config is not None and getattr(config, PRUNED_LAYERS_ATTR, None) and find_layout(config) is not None:
        removed_layers(config)
    apply_config_structure_(model)
    apply_config_channels_(model)  # conv nets: inner channels, then stripe-wise convs
    apply_config_stripes_(model)


def _post_init(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def post_init(self: PreTrainedModel) -> None:
        original(self)
        try:
            _apply_records(self)
        except StructureRecordError:
            raise
        except ValueError as err:  # the record readers raise ValueError on a record that does not fit
            raise StructureRecordError(
                f"{err} Fix or remove the record in the model's config (it describes what was removed from the "
                "unpruned architecture, in its original numbering)."
            ) from None

    return post_init


def _from_pretrained(original: Any) -> Any:
    function = original.__func__  # the classmethod's function

    @functools.wraps(function)
    def from_pretrained(cls: type[PreTrainedModel], pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any):
        try:
            return function(cls, pretrained_model_name_or_path, *args, **kwargs)
        except StructureRecordError as err:
            source = pretrained_model_name_or_path
            where = os.path.join(source, CONFIG_NAME) if isinstance(source, (str, os.PathLike)) else CONFIG_NAME
            raise StructureRecordError(f"{where}: {err}") from None

    return classmethod(from_pretrained)


def _save_pretrained(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def save_pretrained(self: PreTrainedModel, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        names = prepare_auto_map(self)
        if names and kwargs.get("push_to_hub"):
            logger.warning(
                "`save_pretrained(push_to_hub=True)` uploads before the structured modeling file is written; use "
                "`model.push_to_hub(...)` so that remote code travels with the weights."
            )
        result = original(self, save_directory, *args, **kwargs)
        is_main_process = kwargs.get("is_main_process", args[0] if args else True)
        if names and is_main_process:
            write_modeling_file(self, save_directory, names)
        return result

    return save_pretrained


_WRAPPERS = {"post_init": _post_init, "save_pretrained": _save_pretrained, "from_pretrained": _from_pretrained}


def install_hooks() -> None:
    """
    Make `from_pretrained` rebuild shrunk models and `save_pretrained` write their remote code.

    Called on import of `hf_lottery.structured`; calling it again is a no-op.
    """
    for name, wrapper in _WRAPPERS.items():
        if name not in _ORIGINALS:
            _ORIGINALS[name] = vars(PreTrainedModel)[name]  # the raw attribute: `from_pretrained` is a classmethod
            setattr(PreTrainedModel, name, wrapper(_ORIGINALS[name]))


def remove_hooks() -> None:
    """Restore the stock `PreTrainedModel.post_init`, `save_pretrained` and `from_pretrained`."""
    for name, original in list(_ORIGINALS.items()):
        setattr(PreTrainedModel, name, original)
        del _ORIGINALS[name]


def hooks_installed() -> bool:
    """Whether [`install_hooks`] is in effect."""
    return bool(_ORIGINALS)
