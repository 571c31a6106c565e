"""Loading and saving shrunk models through the stock `from_pretrained` / `save_pretrained`.

`import hf_lottery` calls [`install_hooks`] (one visible line in its `__init__`), which wraps two `PreTrainedModel` methods:

- `post_init` (run at the end of every model's `__init__`, inside `from_pretrained` before any weight is loaded):
  when the config records `pruned_heads` / `pruned_neurons` and the family has a layout, the freshly built skeleton
  is shrunk to that structure, so the checkpoint's tensors fit exactly (no `ignore_mismatched_sizes`, no newly
  initialised weights); conv nets likewise lose the inner channels of `config.pruned_channels` and turn the convs of
  `config.pruned_stripes` into stripe-wise convs. This is what transformers 4 did with `config.pruned_heads` in `init_weights`, so checkpoints
  pruned with transformers 4 load the same way.
- `save_pretrained`: for a shrunk model, `config.auto_map` points every Auto class of the family at a
  self-contained modeling file, written beside the weights, so the folder also loads where hf_lottery is not
  installed (`trust_remote_code=True`).

Both wrappers are no-ops for models whose config records no structure.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from transformers import PreTrainedModel
from transformers.utils import logging

from ..structured.channels import apply_config_channels_
from ..structured.remote import prepare_auto_map, write_modeling_file
from ..structured.shrink import apply_config_structure_
from ..structured.stripes import apply_config_stripes_

logger = logging.get_logger(__name__)

_ORIGINALS: dict[str, Callable[..., Any]] = {}


def _post_init(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def post_init(self: PreTrainedModel) -> None:
        original(self)
        apply_config_structure_(self)
        apply_config_channels_(self)  # conv nets: inner channels, then stripe-wise convs
        apply_config_stripes_(self)

    return post_init


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


_WRAPPERS = {"post_init": _post_init, "save_pretrained": _save_pretrained}


def install_hooks() -> None:
    """
    Make `from_pretrained` rebuild shrunk models and `save_pretrained` write their remote code.

    Called on import of `hf_lottery.structured`; calling it again is a no-op.
    """
    for name, wrapper in _WRAPPERS.items():
        if name not in _ORIGINALS:
            _ORIGINALS[name] = getattr(PreTrainedModel, name)
            setattr(PreTrainedModel, name, wrapper(_ORIGINALS[name]))


def remove_hooks() -> None:
    """Restore the stock `PreTrainedModel.post_init` and `save_pretrained`."""
    for name, original in list(_ORIGINALS.items()):
        setattr(PreTrainedModel, name, original)
        del _ORIGINALS[name]


def hooks_installed() -> bool:
    """Whether [`install_hooks`] is in effect."""
    return bool(_ORIGINALS)
