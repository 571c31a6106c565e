"""One round engine, two front doors: the same lottery cases through `LotteryTrainer` and `LotteryCallback`.

The trainer trains each round as its own run; the callback reaches the same levels inside one run (one level
every `pruning_interval_steps`). Their weights differ (the callback keeps one optimizer), so the table compares
what the engine promises both: the schedule, the history record schema and its step counts, the granularity of
every mask, what survivors are rewound to, the seeds of stochastic pruning, the refusals, and resuming.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_lottery import LotteryArguments, LotteryCallback, LotteryTrainer, TicketMask
from hf_lottery.structured.imp import removed_groups, structured_mask
from hf_lottery.testing_utils import tiny_model, toy_dataset
from hf_lottery.ticket.history import REQUIRED_RECORD_FIELDS, ROUND_RECORD_FIELDS

STEPS = 4  # optimizer steps per round (trainer) and per level (callback)
SCHEDULE = [0.0, 0.25, 0.5]
COMMON = dict(
    target_sparsity=0.5,
    pruning_rate=0.25,
    per_device_train_batch_size=16,
    learning_rate=1e-3,
    report_to=[],
    use_cpu=True,
    save_strategy="no",
    logging_steps=1,
    disable_tqdm=True,
)


@dataclass
class Case:
    id: str
    lottery: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("weight-global-pretrained"),
    Case("weight-layer-pretrained", {"pruning_scope": "layer"}),
    Case("weight-global-step", {"rewind": "step", "rewind_step": 2}),
    Case("weight-global-none", {"rewind": "none"}),
    Case("weight-global-random", {"pruning_method": "random", "pruning_seed": 7}),
    Case("head-global-pretrained", {"granularity": "head"}),
    Case("neuron-layer-random", {"granularity": "neuron", "pruning_scope": "layer", "structured_scoring": "random"}),
    Case("head+neuron-global-step", {"granularity": "head+neuron", "rewind": "step", "rewind_step": 2}),
]


class Probe(TrainerCallback):
    """Records the weights each level (round) starts from, the masks, and the weights at the rewind step."""

    def __init__(self, mask_of, rewind_step=None):
        self.mask_of, self.rewind_step = mask_of, rewind_step
        self.starts: list[tuple[TicketMask, dict[str, torch.Tensor]]] = []
        self.at_rewind_step: dict[str, torch.Tensor] | None = None
        self.before_pruning: list[dict[str, torch.Tensor]] = []
        self._seen = None

    @staticmethod
    def _weights(model):
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    def _maybe_start(self, model):
        mask = self.mask_of()
        if mask is not None and (self._seen is None or mask is not self._seen):
            self._seen = mask
            self.starts.append((mask, self._weights(model)))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._maybe_start(model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._maybe_start(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.rewind_step is not None and state.global_step == self.rewind_step and self.at_rewind_step is None:
            self.at_rewind_step = self._weights(model)
        if state.global_step % STEPS == 0:
            self.before_pruning.append(self._weights(model))


def run_trainer(tmp_path, case: Case):
    args = LotteryArguments(output_dir=str(tmp_path / "trainer"), max_steps=STEPS, **COMMON, **case.lottery)
    trainer = LotteryTrainer(model=tiny_model(), args=args, train_dataset=toy_dataset(64))
    theta0 = Probe._weights(trainer.model)
    probe = Probe(lambda: trainer.current_mask, case.lottery.get("rewind_step"))
    trainer.add_callback(probe)
    trainer.train()
    return trainer.lottery_history, trainer.ticket, trainer.model, probe, theta0


def run_callback(tmp_path, case: Case):
    out = str(tmp_path / "callback")
    lottery = LotteryArguments(output_dir=out, pruning_interval_steps=STEPS, **COMMON, **case.lottery)
    callback = LotteryCallback(lottery)
    model = tiny_model()
    theta0 = Probe._weights(model)
    probe = Probe(lambda: callback.ticket, case.lottery.get("rewind_step"))
    train = TrainingArguments(
        output_dir=out,
        max_steps=STEPS * len(SCHEDULE),
        **{k: v for k, v in COMMON.items() if k not in ("target_sparsity", "pruning_rate")},
    )
    Trainer(model=model, args=train, train_dataset=toy_dataset(64), callbacks=[callback, probe]).train()
    return callback.history, callback.ticket, model, probe, theta0


@pytest.fixture(scope="module", params=CASES, ids=[c.id for c in CASES])
def both(request, tmp_path_factory):
    case = request.param
    tmp = tmp_path_factory.mktemp(case.id.replace("+", "_"))
    return case, {"trainer": run_trainer(tmp, case), "callback": run_callback(tmp, case)}


def test_same_history_schema_and_steps(both):
    case, runs = both
    for door, (history, *_rest) in runs.items():
        assert [r["round"] for r in history] == [0, 1, 2], door
        assert [r["target_sparsity"] for r in history] == pytest.approx(SCHEDULE), door
        assert [r["steps"] for r in history] == [STEPS] * 3, door
        assert [r["total_steps"] for r in history] == [STEPS, 2 * STEPS, 3 * STEPS], door
        for record in history:
            assert set(REQUIRED_RECORD_FIELDS) <= set(record) <= set(ROUND_RECORD_FIELDS), (door, sorted(record))
            assert record["train_loss"] is not None and record["seconds"] >= 0
    trainer, callback = runs["trainer"][0], runs["callback"][0]
    assert [set(r) for r in trainer] == [set(r) for r in callback]
    assert [r["sparsity"] for r in trainer] == pytest.approx([r["sparsity"] for r in callback])
    assert [r.get("removed_groups") for r in trainer] == [r.get("removed_groups") for r in callback]


def test_same_granularity(both):
    case, runs = both
    granularity = case.lottery.get("granularity", "weight")
    for door, (_, ticket, model, *_rest) in runs.items():
        if granularity == "weight":
            target = round(0.5 * ticket.num_params)
            if case.lottery.get("pruning_scope") == "layer":
                for name, row in ticket.report().items():
                    assert row["sparsity"] == pytest.approx(0.5, abs=1 / row["numel"] + 1e-9), (door, name)
            else:
                assert ticket.num_pruned == target, door
        else:
            removed = removed_groups(model, ticket)
            assert structured_mask(model, removed) == ticket, f"{door}: the mask is not made of whole groups"
            kinds = {"head": ["heads"], "neuron": ["neurons"], "head+neuron": ["heads", "neurons"]}[granularity]
            for kind in ("heads", "neurons"):
                count = sum(len(v) for v in removed[kind].values())
                assert (count > 0) == (kind in kinds), (door, kind, count)


def test_same_rewinding(both):
    case, runs = both
    rewind = case.lottery.get("rewind", "pretrained")
    for door, (_, _, _, probe, theta0) in runs.items():
        assert len(probe.starts) == 3, door
        for level, (mask, start) in enumerate(probe.starts[1:], start=1):
            if rewind == "pretrained":
                reference = theta0
            elif rewind == "step":
                reference = probe.at_rewind_step
            else:  # "none": the weights the previous level ended with
                reference = probe.before_pruning[level - 1]
            for name, value in start.items():
                keep = mask[name] if name in mask else torch.ones_like(value, dtype=torch.bool)
                assert torch.equal(value[keep], reference[name][keep]), (door, level, name)
                assert torch.count_nonzero(value[~keep]) == 0, (door, level, name)


def test_same_seeds_give_the_same_random_masks(both):
    case, runs = both
    random = case.lottery.get("pruning_method") == "random" or case.lottery.get("structured_scoring") == "random"
    if not random:
        pytest.skip("the mask of a trained model depends on the training, which differs between the two")
    masks = {door: [mask for mask, _ in probe.starts] for door, (_, _, _, probe, _) in runs.items()}
    assert masks["trainer"] == masks["callback"]


@pytest.mark.parametrize("door", ["trainer", "callback"])
def test_an_unreached_rewind_step_is_refused_alike(door, tmp_path):
    case = Case("unreached", {"rewind": "step", "rewind_step": 50})
    with pytest.raises(ValueError, match=r"rewind_step=50 was never reached"):
        (run_trainer if door == "trainer" else run_callback)(tmp_path, case)


def test_learning_rate_rewinding_runs_in_the_trainer_and_is_refused_by_the_callback(tmp_path):
    history, ticket, *_ = run_trainer(tmp_path, Case("lr", {"rewind": "lr"}))
    assert [r["round"] for r in history] == [0, 1, 2] and ticket.sparsity == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match=r"rewind='lr'.*LotteryTrainer"):
        LotteryCallback(LotteryArguments(output_dir=str(tmp_path), rewind="lr"))
    with pytest.raises(ValueError, match=r"finetune_learning_rate.*LotteryTrainer"):
        LotteryCallback(LotteryArguments(output_dir=str(tmp_path), rewind="none", finetune_learning_rate=1e-4))


class _Kill(TrainerCallback):
    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("granularity", ["weight", "head"])
def test_resume_gives_the_uninterrupted_ticket_through_both_doors(granularity, tmp_path):
    lottery = {"granularity": granularity, "save_strategy": "steps", "save_steps": STEPS}
    common = {**COMMON, **lottery}

    # The trainer: killed in round 1, resumed from its run state.
    def trainer(out, kill=None):
        args = LotteryArguments(output_dir=str(out), max_steps=STEPS, **common)
        t = LotteryTrainer(model=tiny_model(), args=args, train_dataset=toy_dataset(64))
        if kill:
            t.add_callback(_Kill(kill))
        return t

    reference = trainer(tmp_path / "t-ref")
    reference.train()
    killed = trainer(tmp_path / "t", kill=STEPS - 1)
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    resumed = trainer(tmp_path / "t")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.ticket == reference.ticket
    assert [r["total_steps"] for r in resumed.lottery_history] == [r["total_steps"] for r in reference.lottery_history]

    # The callback: killed in level 1 after the checkpoint at its boundary, resumed from that checkpoint.
    def callback_run(out, kill=None, resume=False):
        lottery_args = LotteryArguments(output_dir=str(out), pruning_interval_steps=STEPS, **common)
        callback = LotteryCallback(lottery_args)
        train = TrainingArguments(
            output_dir=str(out),
            max_steps=STEPS * len(SCHEDULE),
            **{k: v for k, v in common.items() if k not in ("target_sparsity", "pruning_rate", "granularity")},
        )
        callbacks = [callback] + ([_Kill(kill)] if kill else [])
        model = tiny_model()
        Trainer(model=model, args=train, train_dataset=toy_dataset(64), callbacks=callbacks).train(
            resume_from_checkpoint=resume or None
        )
        return callback, model

    ref_callback, ref_model = callback_run(tmp_path / "c-ref")
    with pytest.raises(KeyboardInterrupt):
        callback_run(tmp_path / "c", kill=STEPS + 2)
    resumed_callback, resumed_model = callback_run(tmp_path / "c", resume=True)
    assert resumed_callback.ticket == ref_callback.ticket
    assert [r["round"] for r in resumed_callback.history] == [0, 1, 2]
    for (name, a), b in zip(resumed_model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, msg=name)
