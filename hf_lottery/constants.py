"""File names and other fixed strings shared across hf_lottery."""

# Ticket artifact (a folder on disk or a Hub repository).
TICKET_CONFIG_NAME = "ticket_config.json"
TICKET_MASK_NAME = "ticket_mask.safetensors"
TICKET_CARD_NAME = "README.md"
SPARSITY_PLOT_NAME = "sparsity_plot.png"

# Lottery run state, inside `output_dir`.
LOTTERY_HISTORY_NAME = "lottery_history.json"
LOTTERY_STATE_DIR = "lottery_state"
LOTTERY_STATE_NAME = "state.json"
THETA0_NAME = "theta0.safetensors"
REWIND_WEIGHTS_NAME = "rewind_weights.safetensors"
ROUND_MASK_TEMPLATE = "mask_round_{round}.safetensors"
ROUND_DIR_TEMPLATE = "round_{round}"
TICKET_DIR_NAME = "ticket"

SAFETENSORS_METADATA = {"format": "pt"}

# Structured pruning: the self-contained modeling file written beside a shrunk checkpoint (loaded through
# `auto_map` with `trust_remote_code=True` where hf_lottery is not installed).
STRUCTURED_MODELING_FILE = "modeling_structured_pruning.py"
