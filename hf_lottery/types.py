"""The choices users pick from, and the shared defaults: one place for arguments, algorithms and checks."""

from __future__ import annotations

# Pruning (selector, prune(), LotteryArguments)
SCOPES = ("global", "layer")  # one threshold over all prunable weights, or each tensor alike
COLLAPSE_POLICIES = ("redistribute", "warn", "error")  # a tensor pushed past max_tensor_sparsity
DEFAULT_MAX_TENSOR_SPARSITY = 0.9

# The lottery run (LotteryArguments, the round engine)
PRUNING_RATE_OF = ("original", "remaining")
REWIND_MODES = ("pretrained", "step", "lr", "none")
GRANULARITIES = ("weight", "head", "neuron", "head+neuron", "channel", "stripe")
CHANNEL_REGULARIZERS = ("polarization", "l1", "none")  # granularity="channel": penalty on the BatchNorm gates
DEFAULT_CHANNEL_PENALTY = 1e-4
DEFAULT_POLARIZATION_T = 1.2
DEFAULT_STRIPE_PENALTY = 5e-5

# Scoring methods' defaults (their `{method}_*` fields of LotteryArguments)
DEFAULT_SYNFLOW_ITERATIONS = 100
HYDRA_OPTIMIZERS = ("adam", "sgd")
DEFAULT_HYDRA_LEARNING_RATE = 0.01
