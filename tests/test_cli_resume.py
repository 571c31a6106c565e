"""hf-lottery find-ticket --resume_from_checkpoint: True, the output folder, a checkpoint, a torn checkpoint."""

from __future__ import annotations

import json

import pytest
from test_cli import model_dir  # noqa: F401  (fixture)

from glue_tasks import sample_dataset_dir
from hf_lottery.cli import main, resume_argument


def test_resume_argument_values(tmp_path):
    out = tmp_path / "out"
    (out / "lottery_state").mkdir(parents=True)
    complete, torn = out / "checkpoint-4", out / "checkpoint-8"
    complete.mkdir()
    (complete / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    torn.mkdir()
    (torn / "trainer_state.json").write_text('{"global_st')
    assert resume_argument("True", out) is True and resume_argument("true", out) is True
    assert resume_argument("False", out) is None and resume_argument(None, out) is None
    assert resume_argument(True, out) is True and resume_argument(False, out) is None
    assert resume_argument(str(out), out) is True
    assert resume_argument(str(complete), out) == str(complete)
    assert resume_argument(str(torn), out) is True  # the run's state skips the torn checkpoint
    with pytest.raises(ValueError, match=r"--resume_from_checkpoint 'maybe' is neither True/False nor a folder"):
        resume_argument("maybe", out)


def cli(model_path, out, *extra):
    return main(
        [
            "find-ticket",
            "--task_name",
            "sst2",
            "--data_dir",
            str(sample_dataset_dir()),
            "--model_name_or_path",
            str(model_path),
            "--max_train_samples",
            "32",
            "--max_eval_samples",
            "16",
            "--max_seq_length",
            "32",
            "--num_train_epochs",
            "1",
            "--per_device_train_batch_size",
            "16",
            "--target_sparsity",
            "0.5",
            "--pruning_rate",
            "0.5",
            "--output_dir",
            str(out),
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--disable_tqdm",
            "true",
            *extra,
        ]
    )


@pytest.mark.parametrize("how", ["True", "folder"])
def test_cli_resumes_a_finished_run(tmp_path, model_dir, how):  # noqa: F811
    out = tmp_path / "out"
    assert cli(model_dir, out) == 0
    history = json.loads((out / "lottery_history.json").read_text())["rounds"]
    assert cli(model_dir, out, "--resume_from_checkpoint", "True" if how == "True" else str(out)) == 0
    again = json.loads((out / "lottery_history.json").read_text())["rounds"]
    assert [r["sparsity"] for r in again] == [r["sparsity"] for r in history] == [0.0, 0.5]
    assert [r["metrics"] for r in again] == [r["metrics"] for r in history]
