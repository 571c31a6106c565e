"""HYDRA (Sehwag et al., NeurIPS 2020): importance scores learned on the task with the weights frozen.

Each prunable weight `w` gets a score `s`, initialised from its magnitude: `s = |w| / mean|w|` over all prunable
weights, so the first top-k is the magnitude mask of the scope and a typical weight scores 1, whatever the weights'
scale. (The paper's per-tensor `sqrt(6 / fan_in) · |w| / max|w|` reorders tensors under a global top-k, and its
scores of ~1e-3 let one Adam step at 0.01 reshuffle the whole ranking: on all-MiniLM-L6-v2 at 60 % that ticket stayed
at chance after retraining, bench/RESULTS.md.) The network is run with
`w ⊙ m(s)`, where `m(s)` keeps the top `(1 - sparsity)` of `|s|` (globally or per tensor, the pruning scope) and the
gradient passes straight through the top-k to `s` (edge-popup); only the scores are trained, every weight is
frozen. The scores rank the weights for the shared selector; the chosen subnetwork is then fine-tuned by the
normal training (the trainer's next round).

The objective is pluggable: `loss_fn(model, batch) -> loss`, by default the model's own loss (`model(**batch).loss`).
With `adversarial=True` the scores are trained against input perturbations (FreeLB-style PGD on the input
embeddings): each batch is run `adversarial_steps` times with `inputs_embeds = E + δ`, the score gradients of the
runs are averaged, and between runs δ takes a normalized gradient-ascent step of length `2ε / steps` and is
projected back onto the ball `‖δ_b‖ ≤ ε‖E_b‖` (per example, over its non-padding tokens; `ε = adversarial_epsilon`,
default 1e-2, relative to the embedding norm). δ starts at a random point of that ball.

The model is never modified: the scores live in a temporary parametrization that is removed afterwards (the same
parameter objects, bit for bit), and `requires_grad` flags and train/eval modes are restored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers.utils import logging

from ..selector import select_mask
from ..ticket.mask import TicketMask
from ..types import DEFAULT_HYDRA_LEARNING_RATE, HYDRA_OPTIMIZERS
from .registry import register_scoring

logger = logging.get_logger(__name__)


class _StraightThrough(torch.autograd.Function):
    """Forward: the 0/1 keep mask. Backward: the gradient passes unchanged to the scores (HYDRA's GetSubnet)."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return keep.to(scores.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _PopupScores(nn.Module):
    """Parametrization `w ↦ w ⊙ m(|s|)` holding the trainable score `s`; `keep` is refreshed every step."""

    def __init__(self, score: torch.Tensor, keep: torch.Tensor):
        super().__init__()
        self.score = nn.Parameter(score)
        self.keep = keep

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * _StraightThrough.apply(self.score.abs(), self.keep).to(weight.dtype)


def default_loss(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """The model's own loss: `model(**batch).loss` (the batch must hold labels)."""
    loss = model(**batch).loss
    if loss is None:
        raise ValueError("The model returned no loss: HYDRA's batches need labels, or pass loss_fn(model, batch).")
    return loss


def _largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the `k` largest entries of a flat tensor, ties broken by position. A selection, not a sort:
    `topk` with k in the millions takes 2.7x as long every step on a 10.8 M-weight encoder (1 CPU thread)."""
    keep = torch.zeros_like(values, dtype=torch.bool)
    if k <= 0:
        return keep
    if k >= values.numel():
        return ~keep
    threshold = values.kthvalue(values.numel() - k + 1).values
    keep = values > threshold
    ties = (values == threshold).nonzero().flatten()[: k - int(keep.sum())]
    keep[ties] = True
    return keep


def _top_k(
    scores: Mapping[str, torch.Tensor],
    prior: Mapping[str, torch.Tensor],
    sparsity: float,
    scope: str,
    floors: Mapping[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep masks of the highest `|scores|` at `sparsity` (on the scores' device; prior-pruned weights stay out).

    `floors[name]` is the fewest weights tensor `name` keeps: its highest scores are kept first and the rest of the
    budget goes to the highest scores of the scope, so a tensor the layer-collapse guard protected stays protected
    while its scores are learned.
    """
    floors = floors or {}
    ranked = {n: s.detach().abs().masked_fill(~prior[n], float("-inf")) for n, s in scores.items()}
    if scope == "layer":
        keep = {}
        for n, s in ranked.items():
            n_keep = s.numel() - max(round(sparsity * s.numel()), int((~prior[n]).sum()))
            keep[n] = _largest(s.flatten(), max(n_keep, floors.get(n, 0))).view(s.shape)
        return keep
    forced = {n: _largest(ranked[n].flatten(), floor) for n, floor in floors.items()}
    flats = [
        s.flatten().masked_fill(forced[n], float("-inf")) if n in forced else s.flatten() for n, s in ranked.items()
    ]
    total = sum(f.numel() for f in flats)
    n_free = max(total - round(sparsity * total) - sum(floors.values()), 0)
    flat = _largest(torch.cat(flats), n_free)
    keep = {
        n: k.view(s.shape) for (n, s), k in zip(ranked.items(), flat.split([f.numel() for f in flats]), strict=True)
    }
    for n, chosen in forced.items():
        keep[n] |= chosen.view(keep[n].shape)
    return keep


def _split_name(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    return model.get_submodule(module_name), attr


@contextmanager
def _popup(model: nn.Module, parameters: Mapping[str, torch.Tensor], init: Mapping[str, torch.Tensor], keep):
    """Freeze every weight and route each prunable one through a [`_PopupScores`]; undo everything on exit."""
    flags = {p: p.requires_grad for p in model.parameters()}
    modes = {m: m.training for m in model.modules()}
    popups: dict[str, _PopupScores] = {}
    orders = {name: list(_split_name(model, name)[0]._parameters) for name in parameters}
    try:
        for p in flags:
            p.requires_grad_(False)
        for name in parameters:
            module, attr = _split_name(model, name)
            popups[name] = _PopupScores(init[name], keep[name])
            parametrize.register_parametrization(module, attr, popups[name], unsafe=True)
        model.train()
        yield popups
    finally:
        for name in popups:
            module, attr = _split_name(model, name)
            parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
        # Removing a parametrization appends the parameter last; restore the order (state-dict key order).
        for name in popups:
            module = _split_name(model, name)[0]
            for key in orders[name]:
                module._parameters[key] = module._parameters.pop(key)
        for p, flag in flags.items():
            p.requires_grad_(flag)
        for m, mode in modes.items():
            m.training = mode


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _adversarial_backward(
    model: nn.Module, batch: dict[str, Any], loss_fn: Callable, epsilon: float, steps: int
) -> float:
    """FreeLB: accumulate the score gradients of `steps` runs on `E + δ`, δ ascending the loss in the ε-ball."""
    if "input_ids" not in batch:
        raise ValueError("hydra adversarial=True perturbs the input embeddings: batches need `input_ids`.")
    batch = dict(batch)
    input_ids = batch.pop("input_ids")
    with torch.no_grad():
        embeds = cast(Any, model).get_input_embeddings()(input_ids)
    live = batch.get("attention_mask", torch.ones_like(input_ids)).unsqueeze(-1).to(embeds.dtype)
    radius = epsilon * (embeds * live).flatten(1).norm(dim=1).view(-1, 1, 1)
    step = 2.0 * radius / steps

    def project(delta: torch.Tensor) -> torch.Tensor:
        delta = delta * live
        norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1).clamp_min(1e-12)
        return delta * (radius / norm).clamp(max=1.0)

    direction = torch.randn_like(embeds) * live
    direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1).clamp_min(1e-12)
    delta = (direction * radius * torch.rand(embeds.shape[0], 1, 1, device=embeds.device)).requires_grad_()
    total = 0.0
    for t in range(steps):
        loss = loss_fn(model, {**batch, "inputs_embeds": embeds + delta}) / steps
        loss.backward()
        total += float(loss.detach())
        if t + 1 < steps:
            grad = delta.grad.detach() * live
            grad = grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1).clamp_min(1e-12)
            delta = project(delta.detach() + step * grad).requires_grad_()
    return total


@register_scoring("hydra", needs_data=True)
def hydra_scores(
    model: nn.Module,
    parameters: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor] | None,
    *,
    sparsity: float,
    dataloader: Iterable[Mapping[str, Any]] | None = None,
    scope: str = "global",
    loss_fn: Callable[[nn.Module, Mapping[str, Any]], torch.Tensor] | None = None,
    epochs: int = 1,
    learning_rate: float = DEFAULT_HYDRA_LEARNING_RATE,
    optimizer: str = "adam",
    adversarial: bool = False,
    adversarial_epsilon: float = 1e-2,
    adversarial_steps: int = 3,
    seed: int = 0,
    select: Callable[..., TicketMask] | None = None,
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    """HYDRA scores: magnitude-initialised importance scores trained on the task through a straight-through top-k.

    Args:
        model (`nn.Module`): the model whose weights are scored (frozen). Not modified.
        parameters (`Mapping[str, torch.Tensor]`): the prunable tensors `{name: parameter}`.
        mask (`Mapping[str, torch.Tensor]`, *optional*): the current mask; its pruned weights stay pruned.
        sparsity (`float`): the sparsity the scores are trained for (the top-k of every step).
        dataloader (`Iterable[dict]`): batches for `loss_fn`, e.g. a `DataLoader` with a collator (a Trainer's
            `get_train_dataloader()`); tensors are moved to the model's device. Re-iterated each epoch.
        scope (`str`, *optional*, defaults to `"global"`): `"global"` or `"layer"` top-k, as the final selection.
        loss_fn (`Callable[[nn.Module, dict], torch.Tensor]`, *optional*): the objective; defaults to
            [`default_loss`] (`model(**batch).loss`).
        epochs (`int`, *optional*, defaults to 1): passes over `dataloader`.
        learning_rate (`float`, *optional*, defaults to 0.01): score learning rate (cosine decay to 0 when the
            dataloader has a length).
        optimizer (`str`, *optional*, defaults to `"adam"`): `"adam"`, or `"sgd"` (momentum 0.9, as the paper).
        adversarial (`bool`, *optional*): train the scores against FreeLB perturbations of the input embeddings.
        adversarial_epsilon (`float`, *optional*, defaults to 1e-2): radius of δ relative to the embedding norm.
        adversarial_steps (`int`, *optional*, defaults to 3): forward/backward runs (ascent steps) per batch.
        seed (`int`, *optional*): seeds dropout and δ (the global RNG is restored afterwards).
        select (`Callable`, *optional*): the shared selector (from [`prune`]); it checks the request and gives the
            first top-k, so the layer-collapse guard shapes the start; later steps use a top-k on the device that
            keeps, in every tensor the guard protected, as many weights as the guard kept there, and the final
            mask is again the selector's. Defaults to [`select_mask`] with `scope` and no guard.

    Returns:
        `dict[str, torch.Tensor]`: `|s|` per weight (float32, CPU), `-inf` where `mask` had pruned.
    """
    if dataloader is None:
        raise ValueError(
            "HYDRA learns its scores on data: pass dataloader= (an iterable of model-ready batches with labels)."
        )
    if epochs < 1:
        raise ValueError(f"HYDRA needs epochs >= 1, got {epochs}.")
    if optimizer not in HYDRA_OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r} is not valid; accepted values: {HYDRA_OPTIMIZERS}.")
    if adversarial and (adversarial_epsilon <= 0 or adversarial_steps < 1):
        raise ValueError("adversarial HYDRA needs adversarial_epsilon > 0 and adversarial_steps >= 1.")
    if epochs > 1 and iter(dataloader) is dataloader:
        raise ValueError("HYDRA with epochs > 1 re-iterates dataloader; got a one-pass iterator.")
    loss_fn = loss_fn if loss_fn is not None else default_loss
    prior = TicketMask(mask) if mask is not None else TicketMask.ones_like(parameters)
    device = next(iter(parameters.values())).device
    prior_dev = {n: prior[n].to(device) for n in parameters}
    # Scores start at |w| over the mean |w| of the kept weights (the module docstring says why not the paper's scale).
    magnitudes = {name: p.detach().float().abs() * prior_dev[name] for name, p in parameters.items()}
    kept = sum(float(w.sum()) for w in magnitudes.values())
    scale = max(kept / max(sum(int(prior_dev[n].sum()) for n in magnitudes), 1), 1e-12)
    init = {name: w / scale for name, w in magnitudes.items()}
    if select is None:
        select = partial(select_mask, scope=scope, max_tensor_sparsity=None)
    # The shared selector checks the request before any training, and its guard shapes the first top-k.
    first = select({n: s.cpu() for n, s in init.items()}, sparsity, mask=mask)
    keep = {n: first[n].to(device) for n in parameters}
    # Where the guard kept more than the plain top-k would (MiniLM's small untrained pooler), every step keeps that
    # many: a plain top-k would empty such a tensor at the first step and cut the path to the loss, so the scores
    # would be learned on a network that outputs a constant (the 60 % SST-2 scores trained at loss ln 2).
    plain = _top_k(init, prior_dev, sparsity, scope) if scope in ("global", "layer") else keep
    floors = {n: int(keep[n].sum()) for n in parameters if int(keep[n].sum()) > int(plain[n].sum())}
    try:
        steps_per_epoch = len(dataloader)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = None
    rng_devices = [device.index if device.index is not None else 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), _popup(model, parameters, init, keep) as popups:
        torch.manual_seed(seed)
        scores = {n: popup.score for n, popup in popups.items()}
        if optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(scores.values(), lr=learning_rate)
        else:
            opt = torch.optim.SGD(scores.values(), lr=learning_rate, momentum=0.9, weight_decay=1e-4)
        total_steps = epochs * steps_per_epoch if steps_per_epoch else None
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, (lambda i: 0.5 * (1 + math.cos(math.pi * i / total_steps))) if total_steps else (lambda i: 1.0)
        )
        for epoch in range(epochs):
            losses = []
            for batch in dataloader:
                batch = _to_device(batch, device)
                opt.zero_grad(set_to_none=True)
                if adversarial:
                    losses.append(_adversarial_backward(model, batch, loss_fn, adversarial_epsilon, adversarial_steps))
                else:
                    loss = loss_fn(model, batch)
                    loss.backward()
                    losses.append(float(loss.detach()))
                opt.step()
                schedule.step()
                if scope in ("global", "layer"):
                    keep = _top_k(scores, prior_dev, sparsity, scope, floors)
                else:  # per-row and N:M groups: the shared selector, on the CPU
                    chosen = select(
                        {n: s.detach().abs().float().cpu() for n, s in scores.items()}, sparsity, mask=mask
                    )
                    keep = {n: chosen[n].to(device) for n in scores}
                for name, popup in popups.items():
                    popup.keep = keep[name]
            if losses:
                logger.info("HYDRA epoch %d/%d: mean loss %.4f", epoch + 1, epochs, sum(losses) / len(losses))
        trained = {n: s.detach().abs().float().cpu() for n, s in scores.items()}
    return {n: s.masked_fill(~prior[n], float("-inf")) for n, s in trained.items()}
