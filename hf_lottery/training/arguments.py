"""`LotteryArguments`: `TrainingArguments` plus the lottery-ticket settings, readable by `HfArgumentParser`."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..types import (
    AUTO_TENSOR_SPARSITY,
    CHANNEL_REGULARIZERS,
    COLLAPSE_POLICIES,
    DEFAULT_CALIBRATION_BATCHES,
    DEFAULT_CHANNEL_PENALTY,
    DEFAULT_HYDRA_LEARNING_RATE,
    DEFAULT_MAX_TENSOR_SPARSITY,
    DEFAULT_POLARIZATION_T,
    DEFAULT_SPARSEGPT_DAMPING,
    DEFAULT_STRIPE_PENALTY,
    DEFAULT_SYNFLOW_ITERATIONS,
    GRANULARITIES,
    HYDRA_OPTIMIZERS,
    PRUNING_RATE_OF,
    REWIND_MODES,
    SCOPES,
    WEIGHT_SCOPES,
    n_m_pattern,
)
from .schedule import sparsity_schedule


def _choices(name: str, value: object, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ValueError(f"{name}={value!r} is not valid; accepted values: {', '.join(map(repr, accepted))}.")


def _tensor_sparsity_cap(value: float | str | None) -> float | str | None:
    """`max_tensor_sparsity` as given in Python or on the command line (where every value arrives as text)."""
    if isinstance(value, str) and value != AUTO_TENSOR_SPARSITY:
        try:
            value = float(value)
        except ValueError:
            raise ValueError(
                f"max_tensor_sparsity must be a fraction in (0, 1] or {AUTO_TENSOR_SPARSITY!r}, got {value!r}."
            ) from None
    # Any text left is AUTO_TENSOR_SPARSITY: the rest was converted above.
    if value is not None and not isinstance(value, str) and not 0.0 < value <= 1.0:
        raise ValueError(f"max_tensor_sparsity must be in (0, 1] or {AUTO_TENSOR_SPARSITY!r}, got {value}.")
    return value


def _check_pruning_scope(scope: str, target_sparsity: float, granularity: str) -> None:
    pattern = n_m_pattern(scope)
    if pattern is None:
        _choices("pruning_scope", scope, WEIGHT_SCOPES if granularity == "weight" else SCOPES)
        return
    if granularity != "weight":
        raise ValueError(f"pruning_scope={scope!r} (N:M) prunes single weights; it needs granularity='weight'.")
    n, m = pattern
    if target_sparsity > 1 - n / m:
        raise ValueError(
            f"pruning_scope={scope!r} keeps {n} of every {m} weights, so target_sparsity can be at most {1 - n / m}; "
            f"got {target_sparsity}."
        )


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
            "help": "'global': one threshold over all prunable weights; 'layer': each tensor alike; 'row': the "
            "weights feeding each output alike (Wanda); 'N:M' such as '2:4': N kept of every M consecutive weights "
            "along the input dimension (target_sparsity at most 1 - N/M).",
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
    max_tensor_sparsity: float | str | None = field(
        default=DEFAULT_MAX_TENSOR_SPARSITY,
        metadata={
            "help": "Layer-collapse guard: the most any one tensor may be pruned (global pruning empties tensors "
            "with small weights, e.g. MiniLM's pooler). 'auto': every tensor keeps a density of at least "
            "min(0.1, half the overall density), i.e. a 0.9 cap up to 80 percent sparsity, 0.975 at 95 percent, "
            "0.995 at 99 percent. A fraction in (0, 1] is a fixed cap; 1.0 disables the guard."
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
        default=None,
        metadata={
            "help": "Seed of stochastic pruning steps (random scores, HYDRA's dropout and perturbations, random "
            "structured choices), plus the round index. Default: seed."
        },
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
            "save_model writes the physically smaller model. Conv nets: 'channel' (inner channels of residual "
            "blocks, BatchNorm scales as gates; counts channels) or 'stripe' (Filter Skeleton stripes; counts "
            "conv weights).",
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
    # Knowledge distillation (training/distillation.py).
    distill_alpha: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the distillation loss in [0, 1]: loss = (1 - distill_alpha) * task loss + "
            "distill_alpha * distillation loss, in training only. 0 disables distillation."
        },
    )
    distill_temperature: float = field(
        default=2.0,
        metadata={
            "help": "Softmax temperature of the distillation KL (classification; the KL is scaled by its square). "
            "Regression heads (num_labels=1) use the mean squared error of the outputs instead."
        },
    )
    distill_hidden_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of a hidden-state distillation term added to the loss (TinyBERT / CoFi layer "
            "distillation): the mean squared error between the student's and the teacher's hidden states, layer by "
            "layer over the non-padding tokens, averaged over the layers. Needs distill_alpha > 0; 0 leaves it out."
        },
    )
    distill_teacher: str | None = field(
        default=None,
        metadata={
            "help": "Teacher of the distillation: a local folder or Hub id loaded with the student's model class, "
            "used from round 0 on. Default: the dense model trained in round 0, frozen, used from round 1 on "
            "(LotteryTrainer; LotteryCallback needs a teacher given)."
        },
    )

    early_bird_interval_steps: int | None = field(
        default=None,
        metadata={
            "help": "Early-bird rounds (off by default): every this many optimizer steps a round computes the mask it "
            "would produce, and stops once consecutive masks differ by less than early_bird_threshold for "
            "early_bird_patience checks. The final round (the ticket) always trains to the end."
        },
    )
    early_bird_threshold: float = field(
        default=0.0007,
        metadata={
            "help": "Early-bird rounds: normalised Hamming distance between consecutive masks that counts as "
            "unchanged (fraction of the masked weights). 0.0007 because on all-MiniLM-L6-v2, checked every 25 "
            "steps, 0.002 stops a round while its mask still moves (a point or more lost at high sparsity), and "
            "0.0007 kept the one-round ticket level with full IMP on SST-2 for a fifth of its steps (bench/RESULTS.md)."
        },
    )
    early_bird_patience: int = field(
        default=3, metadata={"help": "Early-bird rounds: checks in a row below early_bird_threshold before stopping."}
    )
    early_bird_round0: bool = field(
        default=False,
        metadata={
            "help": "Early-bird rounds: stop the dense round 0 early too (its metric is then that of a shorter "
            "training)."
        },
    )
    search_round_steps: int | None = field(
        default=None,
        metadata={
            "help": "LotteryTrainer: train every round but the last, the rounds whose weights only choose the next "
            "mask, for this many optimizer steps (with the learning-rate schedule of a round that long); the last "
            "round, the ticket, trains as configured. A fixed budget where early-bird rounds stop on a criterion: "
            "with pruning_method='hydra' and pruning_rate=target_sparsity it is the cheap ticket of bench/RESULTS.md "
            "(one short dense round, HYDRA scores on its weights, the ticket from θ0). Round 0's metric is then that "
            "of the short training. Refused with pruning_method='synflow' (its ticket is chosen at θ0; no round "
            "searches)."
        },
    )

    # Conv nets (granularity="channel" | "stripe")
    channel_regularizer: str = field(
        default="polarization",
        metadata={
            "help": "granularity='channel': penalty on the BatchNorm scales gating the inner channels, added to "
            "their gradients at every step: 'polarization' (Zhuang et al. 2020; scales kept in [0, 1]), 'l1' "
            "(network slimming) or 'none'.",
            "choices": list(CHANNEL_REGULARIZERS),
        },
    )
    channel_penalty: float = field(
        default=DEFAULT_CHANNEL_PENALTY,
        metadata={"help": "granularity='channel': weight (lambda) of channel_regularizer."},
    )
    polarization_t: float = field(
        default=DEFAULT_POLARIZATION_T,
        metadata={"help": "channel_regularizer='polarization': t in t*L1(g) - L1(g - mean(g)); larger prunes more."},
    )
    stripe_penalty: float = field(
        default=DEFAULT_STRIPE_PENALTY,
        metadata={"help": "granularity='stripe': L1 weight (alpha) of the Filter Skeleton."},
    )
    stripe_skeleton_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "granularity='stripe': step size of the Filter Skeleton. Default: the optimizer's current "
            "learning rate."
        },
    )
    wanda_calibration_batches: int | None = field(
        default=DEFAULT_CALIBRATION_BATCHES,
        metadata={"help": "pruning_method='wanda': training batches run to measure the layers' inputs (None: all)."},
    )
    sparsegpt_calibration_batches: int | None = field(
        default=DEFAULT_CALIBRATION_BATCHES,
        metadata={
            "help": "pruning_method='sparsegpt': training batches run to build each layer's Hessian (None: all)."
        },
    )
    sparsegpt_damping: float = field(
        default=DEFAULT_SPARSEGPT_DAMPING,
        metadata={"help": "pruning_method='sparsegpt': damping added to the Hessian diagonal, times its mean."},
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
        _check_pruning_scope(self.pruning_scope, self.target_sparsity, self.granularity)
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
        self.max_tensor_sparsity = _tensor_sparsity_cap(self.max_tensor_sparsity)
        if self.finetune_learning_rate is not None and self.finetune_learning_rate <= 0:
            raise ValueError(f"finetune_learning_rate must be > 0, got {self.finetune_learning_rate}.")
        if self.pruning_interval_steps is not None and self.pruning_interval_steps <= 0:
            raise ValueError(
                f"pruning_interval_steps must be a positive step count, got {self.pruning_interval_steps}."
            )
        if self.early_bird_interval_steps is not None and self.early_bird_interval_steps < 1:
            raise ValueError(
                f"early_bird_interval_steps must be a positive step count, got {self.early_bird_interval_steps}."
            )
        if self.search_round_steps is not None and self.search_round_steps < 1:
            raise ValueError(f"search_round_steps must be a positive step count, got {self.search_round_steps}.")
        if not 0.0 <= self.early_bird_threshold < 1.0 or self.early_bird_patience < 1:
            raise ValueError(
                "early_bird_threshold must be in [0, 1) and early_bird_patience >= 1, got "
                f"{self.early_bird_threshold} and {self.early_bird_patience}."
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
        for name in ("wanda_calibration_batches", "sparsegpt_calibration_batches"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None (all batches), got {getattr(self, name)}.")
        if not self.sparsegpt_damping > 0:
            raise ValueError(f"sparsegpt_damping must be > 0, got {self.sparsegpt_damping}.")

        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError(f"distill_alpha must be in [0, 1] (0 disables distillation), got {self.distill_alpha}.")
        if self.distill_temperature <= 0:
            raise ValueError(f"distill_temperature must be > 0, got {self.distill_temperature}.")
        if self.distill_hidden_weight < 0:
            raise ValueError(
                f"distill_hidden_weight must be >= 0 (0 leaves it out), got {self.distill_hidden_weight}."
            )
        if self.distill_hidden_weight > 0 and self.distill_alpha == 0.0:
            raise ValueError(
                f"distill_hidden_weight={self.distill_hidden_weight} adds to the distillation loss, which "
                "distill_alpha=0 turns off; set distill_alpha (e.g. 0.5) or distill_hidden_weight=0."
            )
        if self.distill_teacher is not None and self.distill_alpha == 0.0:
            raise ValueError(
                f"distill_teacher={self.distill_teacher!r} is set but distill_alpha=0 turns distillation off; set "
                "distill_alpha (e.g. 0.5) or drop distill_teacher."
            )
        _choices("channel_regularizer", self.channel_regularizer, CHANNEL_REGULARIZERS)
        if self.channel_penalty < 0 or self.stripe_penalty < 0:
            raise ValueError(
                f"channel_penalty and stripe_penalty must be >= 0, got {self.channel_penalty} and "
                f"{self.stripe_penalty}."
            )
        if self.stripe_skeleton_learning_rate is not None and self.stripe_skeleton_learning_rate <= 0:
            raise ValueError(f"stripe_skeleton_learning_rate must be > 0, got {self.stripe_skeleton_learning_rate}.")

    @property
    def distills(self) -> bool:
        """True when the training loss includes knowledge distillation (`distill_alpha > 0`)."""
        return self.distill_alpha > 0.0

    def sparsity_schedule(self, start: float = 0.0) -> list[float]:
        """Sparsity of each round, round 0 (dense, or `start` for an already sparse model) first."""
        return sparsity_schedule(self.target_sparsity, self.pruning_rate, self.pruning_rate_of, start)
