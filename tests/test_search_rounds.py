"""search_round_steps: the rounds that only choose the next mask train a fixed number of steps, the ticket trains
to the end; the cheap HYDRA ticket (one short dense round, HYDRA scores on its weights, the ticket from θ0) is one
LotteryTrainer."""

from __future__ import annotations

import pytest
import torch
from test_trainer import _assert_equal_weights, _resume, _strip_timing, build, kill_at

from hf_lottery import LotteryArguments, LotteryCallback, prune
from hf_lottery.cli import format_history
from hf_lottery.testing_utils import tiny_model
from hf_lottery.training.run_state import snapshot_weights

# 64 examples, batches of 16, 2 epochs: 8 optimizer steps in a full round.
FULL_ROUND = 8


def run(tmp_path, **overrides):
    return build(tmp_path, num_train_epochs=2, **overrides)


def test_search_rounds_stop_at_their_budget_with_their_own_schedule_and_the_ticket_trains_to_the_end(tmp_path):
    trainer, recorder, _ = run(
        tmp_path, target_sparsity=0.5, pruning_rate=0.25, pruning_rate_of="original", search_round_steps=2
    )
    trainer.train()
    history = trainer.lottery_history
    assert [r["steps"] for r in history] == [2, 2, FULL_ROUND]
    assert [r["total_steps"] for r in history] == [2, 4, 4 + FULL_ROUND]
    assert history[-1]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    # linear decay over the round's own length: after step 1 of 2 half the rate is left, after 1 of 8 seven eighths
    assert recorder.first_lr[0] == pytest.approx(1e-3 / 2)
    assert recorder.first_lr[1] == pytest.approx(1e-3 / 2)
    assert recorder.first_lr[2] == pytest.approx(1e-3 * 7 / 8)
    # magnitude reads no data to choose a mask; the ticket's round chose none
    assert [r.get("next_mask", {}).get("scoring_batches") for r in history] == [0, 0, None]
    # round 1's mask was chosen from the weights after round 0's 2 steps
    round0_end = recorder.end[0]
    model = tiny_model(seed=1)
    model.load_state_dict(round0_end, strict=False)
    first = prune(model, 0.25)
    assert all(torch.equal(trainer.ticket[n] & first[n], trainer.ticket[n]) for n in first)  # nested


def test_cheap_hydra_ticket_in_one_trainer_starts_from_theta0_under_hydras_mask(tmp_path):
    trainer, recorder, theta0 = run(
        tmp_path,
        pruning_method="hydra",
        target_sparsity=0.5,
        pruning_rate=0.5,  # one shot to the target
        rewind="pretrained",
        search_round_steps=2,
        hydra_epochs=1,
    )
    trainer.train()
    history = trainer.lottery_history
    assert [r["round"] for r in history] == [0, 1]
    assert [r["steps"] for r in history] == [2, FULL_ROUND]
    # the cost of HYDRA's mask: one epoch of score steps over the 4 training batches, in the record, table and card
    assert history[0]["next_mask"]["scoring_batches"] == 4 and history[0]["next_mask"]["seconds"] >= 0
    assert "next_mask" not in history[1]
    assert "choosing the masks: 4 batches read by the scorer" in format_history(history, trainer.lottery_metric())
    trainer.save_model(str(tmp_path / "ticket"))
    card = (tmp_path / "ticket" / "README.md").read_text()
    assert "and choosing its masks 4 batches read by the scorer (hydra)" in card
    ticket = trainer.ticket
    assert ticket.sparsity == pytest.approx(0.5, abs=1e-3)
    # the ticket's round starts from θ0 ⊙ m, not from round 0's weights
    begin = recorder.begin[1]
    for name, keep in ticket.items():
        assert torch.equal(begin[name], theta0[name] * keep), name
    # HYDRA's mask is not the magnitude mask of the weights it scored
    model = tiny_model(seed=1)
    model.load_state_dict(recorder.end[0], strict=False)
    magnitude = prune(model, 0.5)
    assert any(not torch.equal(ticket[n], magnitude[n]) for n in ticket)


def test_resume_in_the_middle_of_a_search_round_stops_at_its_budget(tmp_path):
    overrides = dict(
        target_sparsity=0.5, pruning_rate=0.25, pruning_rate_of="original", search_round_steps=3, save_strategy="steps"
    )
    overrides["save_steps"] = 1
    reference, _, _ = run(tmp_path / "ref", **overrides)
    reference.train()

    kill_at(tmp_path / "killed", 1, 2, num_train_epochs=2, **overrides)
    resumed = _resume(tmp_path / "killed", num_train_epochs=2, **overrides)
    assert [r["steps"] for r in resumed.lottery_history] == [3, 3, FULL_ROUND]
    assert resumed.ticket == reference.ticket
    assert _strip_timing(resumed.lottery_history) == _strip_timing(reference.lottery_history)
    _assert_equal_weights(snapshot_weights(resumed.model), snapshot_weights(reference.model))


def test_resume_with_another_search_round_budget_is_refused(tmp_path):
    trainer, _, _ = run(tmp_path, target_sparsity=0.5, pruning_rate=0.25, search_round_steps=2)
    trainer.train()
    with pytest.raises(ValueError, match="search_round_steps: 2 then, 4 now"):
        _resume(tmp_path, num_train_epochs=2, target_sparsity=0.5, pruning_rate=0.25, search_round_steps=4)


def test_search_round_steps_is_checked_and_refused_by_the_callback(tmp_path):
    with pytest.raises(ValueError, match="search_round_steps must be a positive step count"):
        LotteryArguments(output_dir=str(tmp_path), search_round_steps=0)
    args = LotteryArguments(output_dir=str(tmp_path), target_sparsity=0.5, search_round_steps=10)
    with pytest.raises(ValueError, match="Use LotteryTrainer, or unset search_round_steps"):
        LotteryCallback(args)


def test_search_round_steps_is_refused_with_a_method_that_prunes_at_theta0(tmp_path):
    # SynFlow's round 0 is the dense baseline, not a search: shortening it would only weaken the reference.
    with pytest.raises(ValueError, match="search_round_steps needs a method that prunes trained weights"):
        run(tmp_path, pruning_method="synflow", target_sparsity=0.5, pruning_rate=0.5, search_round_steps=2)
