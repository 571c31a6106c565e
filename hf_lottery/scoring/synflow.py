"""SynFlow (Tanaka et al., NeurIPS 2020): data-free, iterative synaptic-flow scores on a linearized encoder.

SynFlow scores each weight by `|θ ⊙ ∂R/∂θ|` where `R = 1ᵀ (Π_l |W_l|) 1` is the synaptic flow of the network with
every weight replaced by its absolute value and an all-ones input: the l1 path norm. Pruning the lowest scores and
re-scoring, with the density following the exponential schedule `d_k = d^(k/n)`, never cuts the network (no layer
collapse), without data or labels.

A transformer encoder is not the chain of matrices the paper's analysis assumes; it is made one here, only for the
scoring pass (the model itself is never modified). The aim is the paper's conservation law: every prunable tensor's
scores sum to the same `R` (tested), so a tensor with fewer live weights has larger scores per weight and
iterative pruning cannot empty it.

- **Embeddings**: the base model's `embeddings` module returns an all-ones hidden state (one position; all
  positions would be identical anyway). Token ids, position and token-type tables play no part (never prunable).
- **Weights**: every weight is replaced by `|w|` (pruned ones by zero), in double precision (the flow through a
  deep encoder overflows float32: each Linear multiplies it by about `fan_in · E|w|`). Biases are zero, so `R` is
  the path norm of the paper. Scores are returned divided by their maximum, in float32.
- **Residual connections are cut**: each LayerNorm (or RMSNorm) returns `|γ| ⊙ branch`, the output of the Linear
  that ends the sublayer, instead of `norm(branch + residual)` (post-LN blocks: BERT, RoBERTa, ELECTRA,
  DistilBERT...). With skips, flow bypasses whole sublayers, so a sublayer whose weights are small (a tiny or
  freshly initialised model) carries little flow, its scores shrink as it is pruned, and it collapses. Dropping
  the normalization itself is forced anyway: centering an all-ones input gives zero, and a scale-invariant norm
  leaves no flow to the weights before it.
- **Activations** (GELU, ReLU, tanh, ... from `transformers.activations` and `torch.nn`): identity.
- **Dropout**: off (eval mode).
- **Softmax attention**: `exp` becomes the identity on the (non-negative) scores and the normalizer is held
  fixed: `p_ij = s_ij / stop_grad(Σ_j s_ij)`, `s = q·k/√d`. The forward pass equals uniform attention (no
  blow-up) while Q and K still receive flow (under plain uniform attention they would get none and be pruned
  first). The Q and K projections (`query`/`key`, `q_lin`/`k_lin`, `q_proj`/`k_proj`) see a detached copy of their
  input, so the layers below are credited once, through V, not three times; Q, K and V then each carry the
  sublayer's whole flow, like any Linear in the chain.
- **Output**: `R` is the sum of the base model's pooled output when it has a pooler, else of its last hidden
  state: what a task head reads. The head itself (task-specific, never pruned, often still random) is left out.

The linearized network must be linear in its input; that is checked on the first pass (`R(2·1) = 2·R(1)`), so a
model with a nonlinearity this module does not know fails loudly instead of scoring nonsense.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from transformers import AttentionInterface

from ..selector import select_mask
from ..ticket.mask import TicketMask
from ..types import DEFAULT_SYNFLOW_ITERATIONS
from .registry import register_scoring

SYNFLOW_ATTENTION = "hf_lottery_synflow"

# Attention query/key projections, by family (BERT, RoBERTa, ELECTRA, ALBERT; DistilBERT; most others).
QUERY_KEY_NAMES = ("query", "key", "q_lin", "k_lin", "q_proj", "k_proj")

_TORCH_ACTIVATIONS = (
    nn.GELU,
    nn.ReLU,
    nn.Tanh,
    nn.SiLU,
    nn.Sigmoid,
    nn.Mish,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.LeakyReLU,
    nn.Softplus,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.ReLU6,
)


def _linearized_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention with `exp` linearized and its normalizer held fixed (see the module docstring).

    The scoring input has no padding, so `attention_mask` is ignored.
    """
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    normalizer = scores.sum(dim=-1, keepdim=True).detach()
    # A head whose Q or K is fully pruned has zero scores: it carries no flow (rather than NaN).
    weights = scores / torch.where(normalizer > 0, normalizer, torch.ones_like(normalizer))
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def _is_activation(module: nn.Module) -> bool:
    return isinstance(module, _TORCH_ACTIVATIONS) or type(module).__module__ == "transformers.activations"


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("LayerNorm", "RMSNorm"))


def _identity_hook(module: nn.Module, inputs: tuple, output: Any) -> torch.Tensor:
    return inputs[0]


def _detach_input(module: nn.Module, inputs: tuple) -> tuple:
    return (inputs[0].detach(), *inputs[1:])


@contextmanager
def _linearized(base: nn.Module, input_scale: list[float]) -> Iterator[None]:
    """Hooks and settings of the linearized scoring pass, all restored on exit (exceptions included)."""
    embeddings = getattr(base, "embeddings", None)
    if not isinstance(embeddings, nn.Module):
        raise ValueError(
            f"SynFlow feeds an all-ones hidden state in place of the embeddings, but {type(base).__name__} has no "
            "`embeddings` module."
        )
    config = getattr(base, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        raise ValueError(f"SynFlow needs a transformers model with a config, got {type(base).__name__}.")
    last_linear: list[torch.Tensor | None] = [None]

    def record_linear(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        last_linear[0] = output

    def cut_residual(module: nn.Module, inputs: tuple, output: Any) -> torch.Tensor:
        # Post-LN blocks compute norm(branch + residual) where the branch ends in a Linear: keep the branch only.
        branch, last_linear[0] = last_linear[0], None
        x = branch if branch is not None and branch.shape == inputs[0].shape else inputs[0]
        gain = getattr(module, "weight", None)
        return x if gain is None else x * gain

    modes = {module: module.training for module in base.modules()}
    attn_implementation = config._attn_implementation
    handles = [
        embeddings.register_forward_hook(
            lambda m, i, out: torch.full_like(out, input_scale[0], dtype=torch.float64, requires_grad=False)
        )
    ]
    inside_embeddings = {id(m) for m in embeddings.modules()}
    try:
        for name, module in base.named_modules():
            if id(module) in inside_embeddings:
                continue
            if isinstance(module, nn.Linear):
                handles.append(module.register_forward_hook(record_linear))
                if name.rpartition(".")[2] in QUERY_KEY_NAMES:
                    handles.append(module.register_forward_pre_hook(_detach_input))
            elif _is_activation(module):
                handles.append(module.register_forward_hook(_identity_hook))
            elif _is_norm(module):
                handles.append(module.register_forward_hook(cut_residual))
        base.eval()
        # Registered here, not at import: importing hf_lottery leaves transformers' attention registry alone.
        AttentionInterface.register(SYNFLOW_ATTENTION, _linearized_attention)
        config._attn_implementation = SYNFLOW_ATTENTION
        yield
    finally:
        config._attn_implementation = attn_implementation
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode


def _base_model(model: nn.Module) -> tuple[nn.Module, str]:
    """The encoder the scores flow through and the prefix of its parameter names in `model`."""
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and isinstance(getattr(model, prefix, None), nn.Module):
        return getattr(model, prefix), f"{prefix}."
    return model, ""


def _synaptic_flow(output: Any) -> torch.Tensor:
    pooled = getattr(output, "pooler_output", None)
    return (pooled if pooled is not None else output.last_hidden_state).sum()


@register_scoring("synflow", at_init=True)
def synflow_scores(
    model: nn.Module,
    parameters: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor] | None,
    *,
    sparsity: float,
    iterations: int = DEFAULT_SYNFLOW_ITERATIONS,
    select: Callable[..., TicketMask] | None = None,
    scope: str = "global",
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    """Iterative SynFlow scores of a transformer encoder (Tanaka et al., 2020), without data.

    Runs the paper's loop: `iterations` times, score the current subnetwork and prune it to the next density of
    the exponential schedule `d_k = d_0 · (d / d_0)^(k / iterations)` (`d_0` the density of `mask`, 1 when
    dense; `d = 1 - sparsity`). The intermediate masks come from `select` (the shared selector, so the scope and
    the layer-collapse guard apply at every step); the last scores are returned and the caller ([`prune`]) selects
    the final mask from them. How the encoder is linearized is described in this module's docstring.

    Args:
        model (`nn.Module`): a transformers encoder (BERT, RoBERTa, ... with or without a task head). Not
            modified: its weights, modes, hooks and attention implementation are as before when this returns.
        parameters (`Mapping[str, torch.Tensor]`): the prunable tensors, `{name in model: parameter}`; they must
            lie in the base model (not in the task head).
        mask (`Mapping[str, torch.Tensor]`, *optional*): the current mask; its pruned weights stay pruned.
        sparsity (`float`): the target sparsity of the final mask.
        iterations (`int`, *optional*, defaults to 100): scoring rounds `n` of the schedule (1 = one-shot).
        select (`Callable`, *optional*): `select(scores, sparsity, mask=...) -> TicketMask`; defaults to
            [`select_mask`] with `scope` and no guard.
        scope (`str`, *optional*): used only when `select` is not given.

    Returns:
        `dict[str, torch.Tensor]`: float32 scores normalized to a maximum of 1, `-inf` for weights pruned on the
        way (they stay pruned).
    """
    if iterations < 1:
        raise ValueError(f"SynFlow needs iterations >= 1, got {iterations}.")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}.")
    if select is None:

        def select(scores, target, mask=None):
            return select_mask(scores, target, scope=scope, mask=mask, max_tensor_sparsity=None)

    base, prefix = _base_model(model)
    outside = [name for name in parameters if not name.startswith(prefix)]
    if outside:
        raise ValueError(
            f"SynFlow scores the base model's weights (through its pooled output); {outside[0]!r} lies outside it. "
            "Task heads are never prunable."
        )
    current = TicketMask(mask) if mask is not None else TicketMask.ones_like(parameters)
    start_density, target_density = current.density, 1.0 - sparsity
    if target_density > start_density + 1e-12:
        raise ValueError(f"Requested sparsity {sparsity} is below the current mask's {current.sparsity:.4f}.")

    # The weights of the linearized network, computed once: |w| in double, biases zero. The embeddings keep their
    # own weights (their output is replaced by the all-ones state).
    local = {name[len(prefix) :]: name for name in parameters}
    fixed: dict[str, torch.Tensor] = {}
    for name, param in base.named_parameters():
        if name in local or name.startswith("embeddings."):
            continue
        is_bias = name.endswith("bias")
        fixed[name] = torch.zeros_like(param, dtype=torch.float64) if is_bias else param.detach().abs().double()
    absolute = {rel: parameters[full].detach().abs().double() for rel, full in local.items()}
    device = next(iter(absolute.values())).device
    input_ids = torch.zeros(1, 1, dtype=torch.long, device=device)
    input_scale = [1.0]

    def flow(keep: Mapping[str, torch.Tensor], check_linear: bool) -> dict[str, torch.Tensor]:
        weights = {rel: (absolute[rel] * keep[full].to(device)).requires_grad_() for rel, full in local.items()}
        with _linearized(base, input_scale):
            input_scale[0] = 1.0
            r = _synaptic_flow(functional_call(base, {**fixed, **weights}, (), {"input_ids": input_ids}))
            if check_linear:
                with torch.no_grad():
                    input_scale[0] = 2.0
                    r2 = _synaptic_flow(functional_call(base, {**fixed, **weights}, (), {"input_ids": input_ids}))
                if not torch.isfinite(r) or not torch.allclose(r2, 2 * r, rtol=1e-6):
                    raise ValueError(
                        f"SynFlow could not linearize {type(base).__name__} (R(1)={r.item():.4g}, R(2)="
                        f"{r2.item():.4g}): it contains a nonlinearity other than LayerNorm, the activations of "
                        "transformers.activations / torch.nn and softmax attention."
                    )
        grads = torch.autograd.grad(r, list(weights.values()), allow_unused=True)
        scores = {}
        for (rel, w), g in zip(weights.items(), grads, strict=True):
            scores[local[rel]] = torch.zeros_like(w) if g is None else (g * w).detach().abs()
        largest = max(float(s.max()) for s in scores.values())
        out = {}
        for name, s in scores.items():
            s = (s / largest if largest > 0 else s).float().cpu()
            out[name] = s.masked_fill(~keep[name], float("-inf"))
        return out

    for k in range(1, iterations):
        scores = flow(current, check_linear=k == 1)
        level = 1.0 - start_density * (target_density / start_density) ** (k / iterations)
        current = select(scores, max(round(level, 12), current.sparsity), mask=current)
    return flow(current, check_linear=iterations == 1)
