"""Knowledge distillation in the lottery loop: the loss, and the frozen teacher it compares against.

The student is the sparse network being trained; the teacher is the dense model trained in round 0 (kept once in
the run state) or a model the user gives. The logit loss is Hinton et al.'s: `T² · KL(softmax(t/T) ‖ softmax(s/T))`
for classification, mean squared error of the outputs for regression (`num_labels == 1`, e.g. STS-B). The total
loss is `(1 - distill_alpha) · task loss + distill_alpha · distillation loss`, during training only: evaluation
reports the task loss, comparable across rounds. With `distill_hidden_weight = β > 0` it adds `β ·` the mean squared
error between the student's and the teacher's hidden states, layer by layer over the non-padding tokens (the layer
distillation of TinyBERT and CoFi; a pruned student keeps the teacher's hidden size and depth, so no projection).

Two ways in: [`LotteryTrainer`] overrides `compute_loss` (every Trainer feature keeps working); a plain
[`~transformers.Trainer`] takes `compute_loss_func=LotteryCallback(...).compute_loss_func`, which sees the teacher's
logits through a forward pre-hook on the student ([`Distiller.attach`]).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import logging

from .run_state import load_weights_

logger = logging.get_logger(__name__)

_NOT_MODEL_INPUTS = ("labels", "num_items_in_batch")


def is_regression(config: Any) -> bool:
    """True when the head regresses one value (`num_labels == 1` or `problem_type == "regression"`)."""
    problem = getattr(config, "problem_type", None)
    return problem == "regression" or (problem is None and getattr(config, "num_labels", None) == 1)


def logits_of(outputs: Any) -> torch.Tensor:
    """The logits of a model output (a `ModelOutput`, a dict or a tuple whose first element is the loss)."""
    if isinstance(outputs, Mapping):
        return outputs["logits"]
    if isinstance(outputs, torch.Tensor):
        return outputs
    return outputs[1] if len(outputs) > 1 and outputs[0].dim() == 0 else outputs[0]


def distillation_loss_per_item(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, regression: bool
) -> torch.Tensor:
    """Distillation loss of each item (each row, or each position of token-level logits), not reduced.

    Args:
        student_logits, teacher_logits (`torch.Tensor`): `[..., num_labels]`, the same shape.
        temperature (`float`): softens both distributions (classification); the KL is scaled by `T²` so that
            its gradients keep their size across temperatures (Hinton et al. 2015).
        regression (`bool`): mean squared error of the outputs instead of the KL.

    Returns:
        `torch.Tensor` of shape `student_logits.shape[:-1]`.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"The student's logits {tuple(student_logits.shape)} and the teacher's {tuple(teacher_logits.shape)} "
            "differ in shape: the teacher must have the student's task head (same num_labels)."
        )
    student = student_logits.float()
    teacher = teacher_logits.detach().float()
    if regression:
        return (student - teacher).pow(2).mean(dim=-1)
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)
    return kl * temperature**2


def hidden_states_of(outputs: Any) -> tuple[torch.Tensor, ...]:
    """The hidden states of a model output run with `output_hidden_states=True` (embeddings first)."""
    hidden = outputs.get("hidden_states") if isinstance(outputs, Mapping) else getattr(outputs, "hidden_states", None)
    if hidden is None:
        raise ValueError(
            "distill_hidden_weight > 0 compares hidden states, but the model returned none: it must accept "
            "output_hidden_states=True and return `hidden_states` (every transformers model does)."
        )
    return tuple(hidden)


def hidden_state_loss(
    student_hidden: tuple[torch.Tensor, ...],
    teacher_hidden: tuple[torch.Tensor, ...],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error between the student's and the teacher's hidden states, averaged over the layers.

    Args:
        student_hidden, teacher_hidden (`tuple[torch.Tensor]`): `hidden_states` of each model, `[batch, tokens,
            hidden]` per entry, the embedding output first; it is skipped (both share the embeddings, which
            are not pruned) unless it is the only entry.
        attention_mask (`torch.Tensor`, *optional*): `[batch, tokens]`; padding tokens do not count.

    Returns:
        A scalar: per token, the squared error averaged over the hidden dimension; the mean over the counted
        tokens; the mean over the layers.
    """
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError(
            f"The student returns {len(student_hidden)} hidden states and the teacher {len(teacher_hidden)}: hidden-"
            "state distillation compares layer with layer, so both need the same depth (a ticket in training keeps "
            "every layer; set distill_hidden_weight=0 for a teacher of another depth)."
        )
    layers = list(zip(student_hidden, teacher_hidden, strict=True))
    layers = layers[1:] if len(layers) > 1 else layers
    total = student_hidden[0].new_zeros((), dtype=torch.float32)
    for student, teacher in layers:
        if student.shape != teacher.shape:
            raise ValueError(
                f"A student hidden state of shape {tuple(student.shape)} meets a teacher's of {tuple(teacher.shape)}: "
                "hidden-state distillation needs the teacher's hidden size (set distill_hidden_weight=0)."
            )
        per_token = (student.float() - teacher.detach().float()).pow(2).mean(dim=-1)
        if attention_mask is not None and attention_mask.shape == per_token.shape:
            weight = attention_mask.to(per_token.dtype)
            total = total + (per_token * weight).sum() / weight.sum().clamp_min(1)
        else:
            total = total + per_token.mean()
    return total / len(layers)


def task_loss_per_item(logits: torch.Tensor, labels: torch.Tensor, config: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequence-classification loss of each item, as the model computes it, and which items count.

    Mirrors the problem types of Transformers' sequence-classification heads (regression, single-label,
    multi-label). Returns `(loss per item, weight per item)`; items labelled -100 weigh 0.
    """
    num_labels = logits.shape[-1]
    problem = getattr(config, "problem_type", None)
    if problem is None:
        if num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        value = logits.float().squeeze(-1) if num_labels == 1 else logits.float()
        loss = (value - labels.float().view_as(value)).pow(2)
        loss = loss if num_labels == 1 else loss.mean(dim=-1)
        return loss, torch.ones_like(loss)
    if problem == "single_label_classification":
        flat_labels = labels.view(-1)
        loss = F.cross_entropy(logits.float().view(-1, num_labels), flat_labels, ignore_index=-100, reduction="none")
        return loss, (flat_labels != -100).float()
    loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none").mean(dim=-1)
    return loss, torch.ones_like(loss)


def frozen_copy(model: nn.Module, weights: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """A frozen copy of `model` in eval mode (optionally with `weights` loaded): the round-0 teacher."""
    teacher = copy.deepcopy(model)
    if weights is not None:
        load_weights_(teacher, dict(weights))
    return freeze(teacher)


def freeze(model: nn.Module) -> nn.Module:
    """`model` in eval mode with every parameter frozen (dropout off: the teacher is deterministic)."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def load_teacher(teacher: str | nn.Module, student: nn.Module) -> nn.Module:
    """The teacher the user gives: a model, or a local folder / Hub id loaded with the student's model class.

    Raises:
        `ValueError`: the teacher's outputs cannot be compared with the student's (another `num_labels`).
    """
    if isinstance(teacher, nn.Module):
        model = teacher
    else:
        base = cast(Any, student).get_base_model() if hasattr(student, "get_base_model") else student
        loader = getattr(type(base), "from_pretrained", None)
        if loader is None:
            raise ValueError(
                f"distill_teacher={teacher!r} is a path, but the student ({type(base).__name__}) has no "
                "from_pretrained to load it with: pass the teacher model itself (teacher=...)."
            )
        model = loader(teacher)
    student_labels = getattr(getattr(student, "config", None), "num_labels", None)
    teacher_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if student_labels is not None and teacher_labels is not None and student_labels != teacher_labels:
        raise ValueError(
            f"The teacher has num_labels={teacher_labels}, the student {student_labels}: distillation compares "
            "their outputs label by label, so the teacher must be fine-tuned on the student's task."
        )
    return freeze(model)


class Distiller:
    """A frozen teacher and the logit-distillation loss mixed into the student's task loss.

    Args:
        teacher (`nn.Module`): the frozen teacher ([`freeze`] is applied again; it is moved to the student's
            device on first use).
        alpha (`float`): weight of the distillation loss, in (0, 1]; the task loss weighs `1 - alpha`.
        temperature (`float`): softmax temperature of the KL (classification).
        regression (`bool`): mean squared error instead of the KL (a one-value regression head).
        hidden_weight (`float`, *optional*, defaults to 0): weight of the hidden-state loss ([`hidden_state_loss`])
            added to the mixed loss; 0 leaves it out (and the models are run without `output_hidden_states`).
    """

    def __init__(
        self, teacher: nn.Module, alpha: float, temperature: float, regression: bool, hidden_weight: float = 0.0
    ):
        self.teacher = freeze(teacher)
        self.alpha = alpha
        self.temperature = temperature
        self.regression = regression
        self.hidden_weight = hidden_weight
        self._captured: tuple[torch.Tensor, tuple[torch.Tensor, ...] | None] | None = None
        self._attention: torch.Tensor | None = None
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._config: Any = None
        self.calls = 0  # training steps whose loss included the distillation term

    @classmethod
    def from_arguments(cls, args: Any, teacher: nn.Module, student: nn.Module) -> Distiller:
        """A distiller configured by the `distill_*` fields of a [`LotteryArguments`]."""
        config = getattr(student, "config", None)
        return cls(
            teacher,
            args.distill_alpha,
            args.distill_temperature,
            is_regression(config),
            hidden_weight=getattr(args, "distill_hidden_weight", 0.0),
        )

    @property
    def uses_hidden_states(self) -> bool:
        """Whether the loss compares hidden states (both models then run with `output_hidden_states=True`)."""
        return self.hidden_weight > 0.0

    # -- the teacher ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_logits(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        """The teacher's logits on a batch of model inputs (labels are not passed, so no teacher loss)."""
        return self.teacher_outputs(inputs)[0]

    @torch.no_grad()
    def teacher_outputs(self, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """The teacher's logits and, when the loss compares them, its hidden states on a batch of model inputs."""
        model_inputs = {k: v for k, v in inputs.items() if k not in _NOT_MODEL_INPUTS}
        device = next((v.device for v in model_inputs.values() if isinstance(v, torch.Tensor)), None)
        if device is not None:
            self.teacher.to(device)
        if self.uses_hidden_states:
            model_inputs["output_hidden_states"] = True
        outputs = self.teacher(**model_inputs)
        hidden = tuple(h.detach() for h in hidden_states_of(outputs)) if self.uses_hidden_states else None
        return logits_of(outputs).detach(), hidden

    # -- the loss ---------------------------------------------------------------------------------------------
    def distillation_loss(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, inputs: Mapping[str, Any] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed distillation loss over the batch and the number of items it sums (padding positions of
        token-level logits excluded)."""
        per_item = distillation_loss_per_item(student_logits, teacher_logits, self.temperature, self.regression)
        weight = torch.ones_like(per_item)
        attention = (inputs or {}).get("attention_mask")
        if per_item.dim() == 2 and isinstance(attention, torch.Tensor) and attention.shape == per_item.shape:
            weight = attention.to(per_item.dtype)
        return (per_item * weight).sum(), weight.sum()

    def mixed_loss(
        self,
        task_loss: torch.Tensor,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        inputs: Mapping[str, Any] | None = None,
        scale: float = 1.0,
        student_hidden: tuple[torch.Tensor, ...] | None = None,
        teacher_hidden: tuple[torch.Tensor, ...] | None = None,
    ) -> torch.Tensor:
        """`(1 - alpha) · task_loss + scale · (alpha · mean distillation loss + hidden_weight · hidden-state
        loss)` (the task loss as the model reduced it, a per-batch mean; `scale` is what the Trainer multiplied
        it by afterwards)."""
        total, count = self.distillation_loss(student_logits, teacher_logits, inputs)
        self.calls += 1
        loss = (1.0 - self.alpha) * task_loss + self.alpha * scale * total / count.clamp_min(1)
        if self.uses_hidden_states:
            loss = loss + self.hidden_weight * scale * self._hidden_loss(student_hidden, teacher_hidden, inputs)
        return loss

    def _hidden_loss(
        self,
        student_hidden: tuple[torch.Tensor, ...] | None,
        teacher_hidden: tuple[torch.Tensor, ...] | None,
        inputs: Mapping[str, Any] | None,
    ) -> torch.Tensor:
        if student_hidden is None or teacher_hidden is None:
            raise ValueError("distill_hidden_weight > 0 needs the hidden states of the student and of the teacher.")
        attention = (inputs or {}).get("attention_mask")
        return hidden_state_loss(
            student_hidden, teacher_hidden, attention if isinstance(attention, torch.Tensor) else None
        )

    # -- a plain Trainer: compute_loss_func and a forward pre-hook ---------------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Run the teacher on every training forward pass of `model` (its logits then wait for
        [`compute_loss_func`])."""
        self.detach()
        self._config = getattr(model, "config", None)

        def capture(module, args, kwargs):
            self._captured = self.teacher_outputs(kwargs) if module.training else None
            if self._captured is not None and self.uses_hidden_states:
                self._attention = kwargs.get("attention_mask")
                return args, {**kwargs, "output_hidden_states": True}
            return None

        self._hook = model.register_forward_pre_hook(capture, with_kwargs=True)

    def detach(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._captured = None
        self._attention = None

    def compute_loss_func(
        self, outputs: Any, labels: torch.Tensor | None, num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """The loss for `Trainer(compute_loss_func=...)`: the task loss of a sequence-classification head plus,
        in training, the distillation loss against the teacher's logits of the same forward pass.

        Both terms are summed over the batch and divided by `num_items_in_batch` (the labelled items of the whole
        accumulated batch, across processes), as the Trainer expects of a `compute_loss_func`; a per-batch mean
        when the Trainer gives no count.
        """
        logits = logits_of(outputs)
        if labels is None:
            raise ValueError(
                "Distillation through compute_loss_func needs labelled batches (the task loss is part of the loss)."
            )
        task, weight = task_loss_per_item(logits, labels, self._config)
        captured, self._captured = self._captured, None
        attention, self._attention = self._attention, None
        task_sum, count = (task * weight).sum(), weight.sum()
        denominator = num_items_in_batch if num_items_in_batch is not None else count.clamp_min(1)
        if captured is None:  # evaluation: the task loss alone
            return task_sum / denominator
        teacher_logits, teacher_hidden = captured
        distill_sum, distill_count = self.distillation_loss(logits, teacher_logits)
        self.calls += 1
        # The distillation terms count the same items as the task term: each is rescaled to the task's count.
        distill_sum = distill_sum * (count / distill_count.clamp_min(1))
        total = (1.0 - self.alpha) * task_sum + self.alpha * distill_sum
        if self.uses_hidden_states:
            hidden = self._hidden_loss(hidden_states_of(outputs), teacher_hidden, {"attention_mask": attention})
            total = total + self.hidden_weight * hidden * count
        return total / denominator
