"""`LotteryArguments`: `TrainingArguments` plus the lottery-ticket settings, readable by `HfArgumentParser`."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..types import (
    COLLAPSE_POLICIES,
    DEFAULT_HYDRA_LEARNING_RATE,
    DEFAULT_MAX_TENSOR_SPARSITY,
    DEFAULT_SYNFLOW_ITERATIONS,
    GRANULARITIES,
    HYDRA_OPTIMIZERS,
    PRUNING_RATE_OF,
    REWIND_MODES,
    SCOPES,
)
from .schedule import sparsity_schedule


def _choices(name: str, value: object, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ValueError(f"{name}={value!r} is not valid; accepted values: {', '.join(map(repr, accepted))}.")


@dataclass
class LotteryArguments(TrainingArguments):
    """[`~transformers.TrainingArguments`] plus the settings of Iterative Magnitude Pruning with rewinding.

    Round 0 trains the dense model; each later round prunes to the next sparsity of the schedule, rewinds and
    trains again, until `target_sparsity`. See the field help texts (also `--help` of `hf-lottery find-ticket`).
    """

    target_sparsity: float = field(
        default=0.5,
        metadata={"help": "Fraction of the prunable weights removed in the final ticket, in [0, 1)."},
    )
    pruning_rate: float = field(
        default=0.1,
        metadata={
            "help": "Fraction pruned per round, in (0, 1); of the original or remaining count (pruning_rate_of)."
        },
    )
    pruning_rate_of: str = field(
        default="original",
        metadata={
            "help": "'original': each round removes pruning_rate of the original weights (BERT-Tickets: 0.1, 0.2, "
            "... of the weights); 'remaining': of the weights still alive (open_lth: density (1-rate)^round).",
            "choices": list(PRUNING_RATE_OF),
        },
    )
    rewind: str = field(
        default="pretrained",
        metadata={
            "help": "How survivors restart each round: 'pretrained' (back to the weights at the start of train(), "
            "Chen et al.), 'step' (to the weights after rewind_step steps of round 0), 'lr' (keep trained weights, "
            "restart the learning-rate schedule; Renda et al.), 'none' (keep trained weights, fine-tune at "
            "finetune_learning_rate).",
            "choices": list(REWIND_MODES),
        },
    )
    rewind_step: int | None = field(
        default=None, metadata={"help": "Optimizer step of round 0 to rewind to when rewind='step'."}
    )
    finetune_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Constant learning rate of the rounds after round 0 when rewind='none' (the fine-tuning "
            "baseline). Default: learning_rate / 10."
        },
    )
    pruning_scope: str = field(
        default="global",
        metadata={
            "help": "'global': one threshold over all prunable weights; 'layer': each tensor alike.",
            "choices": list(SCOPES),
        },
    )
    pruning_method: str = field(
        default="magnitude",
        metadata={
            "help": "Scoring method from the registry (hf_lottery.registered_methods()): 'magnitude', 'random', ..."
        },
    )
    prune_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Regular expressions (re.fullmatch) over parameter names selecting the prunable weights. "
            "Default: the weight of every nn.Linear of the base model (encoder Q, K, V, attention output, "
            "intermediate, output, and the pooler); never embeddings, LayerNorm, biases or the task head."
        },
    )
    max_tensor_sparsity: float | None = field(
        default=DEFAULT_MAX_TENSOR_SPARSITY,
        metadata={
            "help": "Layer-collapse guard: the most any one tensor may be pruned (global pruning empties tensors "
            "with small weights, e.g. MiniLM's pooler). Set to 1.0 to disable."
        },
    )
    on_tensor_collapse: str = field(
        default="redistribute",
        metadata={
            "help": "When a tensor would pass max_tensor_sparsity: 'redistribute' (cap it, prune elsewhere), "
            "'warn' (allow and log a warning), 'error' (refuse).",
            "choices": list(COLLAPSE_POLICIES),
        },
    )
    pruning_seed: int | None = field(
        default=None, metadata={"help": "Seed of stochastic pruning methods (random). Default: seed."}
    )
    pruning_interval_steps: int | None = field(
        default=None,
        metadata={
            "help": "LotteryCallback without a mask: prune one level every this many optimizer steps inside a "
            "single run (gradual IMP, as BERT-Tickets' script). Default: spread the levels evenly over the run."
        },
    )
    granularity: str = field(
        default="weight",
        metadata={
            "help": "What is pruned: 'weight' (unstructured), or whole attention heads and/or FFN neurons "
            "('head', 'neuron', 'head+neuron'): target_sparsity and pruning_rate then count groups, and "
            "save_model writes the physically smaller model.",
            "choices": list(GRANULARITIES),
        },
    )
    structured_scoring: str = field(
        default="magnitude",
        metadata={
            "help": "Group score for structured granularities: 'magnitude' (norm of the group's weights), "
            "'first_order' (|dL/dgate| over the train data, Michel et al. 2019) or 'random'.",
        },
    )
    # Settings of one scoring method are named `{method}_{kwarg}` (scoring_kwargs_from_args passes them on).
    synflow_iterations: int = field(
        default=DEFAULT_SYNFLOW_ITERATIONS,
        metadata={
            "help": "pruning_method='synflow': scoring rounds of the exponential schedule (density d^(k/n) after "
            "round k of n); 1 = one-shot."
        },
    )
    hydra_epochs: int = field(
        default=1, metadata={"help": "pruning_method='hydra': passes over the training data to learn the scores."}
    )
    hydra_learning_rate: float = field(
        default=DEFAULT_HYDRA_LEARNING_RATE,
        metadata={"help": "pruning_method='hydra': learning rate of the scores (cosine decay)."},
    )
    hydra_optimizer: str = field(
        default="adam",
        metadata={
            "help": "pruning_method='hydra': optimizer of the scores, 'adam' or 'sgd' (momentum 0.9).",
            "choices": list(HYDRA_OPTIMIZERS),
        },
    )
    hydra_adversarial: bool = field(
        default=False,
        metadata={"help": "pruning_method='hydra': learn the scores against FreeLB perturbations of the embeddings."},
    )
    hydra_adversarial_epsilon: float = field(
        default=1e-2,
        metadata={"help": "pruning_method='hydra', hydra_adversarial: radius of δ relative to the embedding norm."},
    )
    hydra_adversarial_steps: int = field(
        default=3,
        metadata={
            "help": "pruning_method='hydra', hydra_adversarial: ascent steps (forward/backward runs) per batch."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.target_sparsity < 1.0:
            raise ValueError(
                f"target_sparsity must be a fraction in [0, 1) (0.6 removes 60%), got {self.target_sparsity}."
            )
        if not 0.0 < self.pruning_rate < 1.0:
            raise ValueError(f"pruning_rate must be in (0, 1), got {self.pruning_rate}.")
        _choices("pruning_rate_of", self.pruning_rate_of, PRUNING_RATE_OF)
        _choices("rewind", self.rewind, REWIND_MODES)
        _choices("pruning_scope", self.pruning_scope, SCOPES)
        _choices("on_tensor_collapse", self.on_tensor_collapse, COLLAPSE_POLICIES)
        _choices("granularity", self.granularity, GRANULARITIES)
        # pruning_method and structured_scoring are checked against their registries when a run is set up (the
        # round engine): the arguments know fixed choices only, never the algorithms.
        if self.rewind == "step":
            if self.rewind_step is None or self.rewind_step < 0:
                raise ValueError(
                    "rewind='step' needs rewind_step, a step count >= 0 of round 0 (e.g. rewind_step=100)."
                )
        elif self.rewind_step is not None:
            raise ValueError(f"rewind_step is only used with rewind='step', not rewind={self.rewind!r}.")
        if self.max_tensor_sparsity is not None and not 0.0 < self.max_tensor_sparsity <= 1.0:
            raise ValueError(f"max_tensor_sparsity must be in (0, 1], got {self.max_tensor_sparsity}.")
        if self.finetune_learning_rate is not None and self.finetune_learning_rate <= 0:
            raise ValueError(f"finetune_learning_rate must be > 0, got {self.finetune_learning_rate}.")
        if self.pruning_interval_steps is not None and self.pruning_interval_steps <= 0:
            raise ValueError(
                f"pruning_interval_steps must be a positive step count, got {self.pruning_interval_steps}."
            )
        if self.synflow_iterations < 1:
            raise ValueError(f"synflow_iterations must be >= 1, got {self.synflow_iterations}.")
        if self.hydra_epochs < 1:
            raise ValueError(f"hydra_epochs must be >= 1, got {self.hydra_epochs}.")
        if self.hydra_learning_rate <= 0:
            raise ValueError(f"hydra_learning_rate must be > 0, got {self.hydra_learning_rate}.")
        _choices("hydra_optimizer", self.hydra_optimizer, HYDRA_OPTIMIZERS)
        if self.hydra_adversarial_epsilon <= 0 or self.hydra_adversarial_steps < 1:
            raise ValueError(
                "hydra_adversarial_epsilon must be > 0 and hydra_adversarial_steps >= 1, got "
                f"{self.hydra_adversarial_epsilon} and {self.hydra_adversarial_steps}."
            )

    def sparsity_schedule(self, start: float = 0.0) -> list[float]:
        """Sparsity of each round, round 0 (dense, or `start` for an already sparse model) first."""
        return sparsity_schedule(self.target_sparsity, self.pruning_rate, self.pruning_rate_of, start)
