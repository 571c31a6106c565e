"""The choices users pick from, and the shared defaults: one place for arguments, algorithms and checks."""

from __future__ import annotations

# Pruning (selector, prune(), LotteryArguments)
SCOPES = ("global", "layer")  # one threshold over all prunable weights, or each tensor alike
COLLAPSE_POLICIES = ("redistribute", "warn", "error")  # a tensor pushed past max_tensor_sparsity
# The layer-collapse guard's default, "auto": no tensor's density falls below the smaller of
# AUTO_MIN_TENSOR_DENSITY and AUTO_RELATIVE_TENSOR_DENSITY x the overall density of the request. Up to 80 % overall
# this is the fixed 90 % cap (MiniLM's untrained pooler keeps its largest 10 % at 50-70 %); above, the cap follows
# the request (95 % at 90 %, 97.5 % at 95 %, 99.5 % at 99 %), so extreme targets stay reachable with every tensor
# alive.
AUTO_TENSOR_SPARSITY = "auto"
AUTO_MIN_TENSOR_DENSITY = 0.1
AUTO_RELATIVE_TENSOR_DENSITY = 0.5
DEFAULT_MAX_TENSOR_SPARSITY = AUTO_TENSOR_SPARSITY

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
DEFAULT_CALIBRATION_BATCHES = 32  # Wanda / SparseGPT inside a run: enough tokens, not the whole training set
DEFAULT_SPARSEGPT_DAMPING = 0.01


# Weight-level scopes beyond SCOPES (selector, prune(), LotteryArguments.pruning_scope): "row" compares the weights
# feeding each output (Wanda's groups); "N:M" (e.g. "2:4") keeps N of every M consecutive weights along the input.
ROW_SCOPE = "row"
WEIGHT_SCOPES = (*SCOPES, ROW_SCOPE)


def n_m_pattern(scope: str) -> tuple[int, int] | None:
    """`(N, M)` for an N:M scope such as `"2:4"` (1 <= N < M), `None` for any other string."""
    if not isinstance(scope, str):
        return None
    n, sep, m = scope.partition(":")
    if not sep or not n.isdigit() or not m.isdigit() or not 1 <= int(n) < int(m):
        return None
    return int(n), int(m)


def is_weight_scope(scope: str) -> bool:
    """True for a scope of unstructured pruning: one of `WEIGHT_SCOPES` or an N:M pattern."""
    return scope in WEIGHT_SCOPES or n_m_pattern(scope) is not None
