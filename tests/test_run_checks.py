"""Settings checked when a run is set up: what is accepted works, and the schedule bound is computed exactly."""

from __future__ import annotations

import pytest
import torch
from test_bad_inputs import largs, trainer

from hf_lottery.training.checks import MAX_SCHEDULE_ROUNDS, check_run_settings, schedule_length


def test_rewind_step_zero_rewinds_to_theta0(tmp_path):
    run = trainer(tmp_path, rewind="step", rewind_step=0)
    run.train()
    rewind, theta0 = run._run_state.load_rewind_weights(), run._run_state.load_theta0()
    assert rewind.keys() == theta0.keys() and all(torch.equal(rewind[k], theta0[k]) for k in theta0)
    assert [r["round"] for r in run.lottery_history] == [0, 1]


@pytest.mark.parametrize("rate_of", ["original", "remaining"])
@pytest.mark.parametrize(("target", "rate"), [(0.1, 0.1), (0.5, 0.2), (0.9, 0.1), (0.95, 0.07), (0.0, 0.3)])
def test_schedule_length_is_the_schedule_built(tmp_path, target, rate, rate_of):
    args = largs(tmp_path, target_sparsity=target, pruning_rate=rate, pruning_rate_of=rate_of)
    assert schedule_length(args) == len(args.sparsity_schedule()) - 1


def test_schedule_bound_is_checked_before_building(tmp_path):
    args = largs(tmp_path, target_sparsity=0.9, pruning_rate=1e-9)  # a schedule of 9e8 rounds is never built
    with pytest.raises(ValueError, match=rf"more than the {MAX_SCHEDULE_ROUNDS}"):
        check_run_settings(args)
