"""File names, format versions and the version of hf_lottery: the fixed strings shared across the package."""

__version__ = "0.1.0"

# Ticket artifact (a folder on disk or a Hub repository).
TICKET_CONFIG_NAME = "ticket_config.json"
TICKET_MASK_NAME = "ticket_mask.safetensors"
# peft's adapter config: a ticket saved beside a LoRA adapter records itself there, under this key.
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_TICKET_KEY = "hf_lottery_ticket"
TICKET_CARD_NAME = "README.md"
SPARSITY_PLOT_NAME = "sparsity_plot.png"

# Lottery run state, inside `output_dir`.
LOTTERY_HISTORY_NAME = "lottery_history.json"
LOTTERY_STATE_DIR = "lottery_state"
LOTTERY_STATE_NAME = "state.json"
THETA0_NAME = "theta0.safetensors"
REWIND_WEIGHTS_NAME = "rewind_weights.safetensors"
TEACHER_NAME = "teacher.safetensors"  # the round-0 dense model distilled from (distill_alpha > 0)
ROUND_MASK_TEMPLATE = "mask_round_{round}.safetensors"
ROUND_DIR_TEMPLATE = "round_{round}"
TICKET_DIR_NAME = "ticket"
EARLY_BIRD_STATE_NAME = "early_bird_state.safetensors"  # in each checkpoint folder of an early-bird round
CALLBACK_MASK_NAME = "lottery_callback_mask.safetensors"  # LotteryCallback: the mask, in each checkpoint folder

SAFETENSORS_METADATA = {"format": "pt"}

# Ticket artifact format.
TICKET_FORMAT_VERSION = 1  # version of ticket_config.json; readers refuse newer ones
MASK_FORMAT_VERSION = 1  # version of the mask codec inside ticket_mask.safetensors
MASK_METADATA_KEY = "hf_lottery_masks"  # safetensors metadata entry: JSON list of per-tensor headers
MASK_FORMAT_KEY = "hf_lottery_mask_format"  # safetensors metadata entry: MASK_FORMAT_VERSION
LIBRARY_NAME = "hf_lottery"
TICKET_CARD_TEMPLATE = "ticket_card.md"  # in hf_lottery/templates/ (packaged copy of model_cards/ticket_card.md)
TICKET_CARD_TAGS = ("lottery-ticket", "pruning", "sparsity")
TENSOR_ORDER_METADATA_KEY = "hf_lottery.tensor_order"

# Structured pruning: the self-contained modeling file written beside a shrunk checkpoint (loaded through
# `auto_map` with `trust_remote_code=True` where hf_lottery is not installed).
STRUCTURED_MODELING_FILE = "modeling_structured_pruning.py"

# CPU export (`hf_lottery.export_for_cpu`): a `save_pretrained` folder plus these two files.
CPU_EXPORT_CONFIG_NAME = "cpu_export.json"  # how to rebuild the exported model (quantization, backend, modules)
# Version of cpu_export.json; readers refuse newer ones. 2: `weight_scales` recorded (version 1 meant per-tensor
# torch.ao scales), so that a reader that predates it cannot silently re-quantize another way.
CPU_EXPORT_FORMAT_VERSION = 2
SPEED_FIGURES_NAME = "speed.json"  # the figures of `measure_speed`, also shown in the card's "Speed" section
