"""hf-lottery find-ticket: argument parsing (recipes, JSON, errors) and an end-to-end run on real SST-2 rows."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest

from hf_lottery.cli import main, parse_args
from hf_lottery.testing_utils import tiny_model


@pytest.fixture
def model_dir(tmp_path):
    """A tiny random BERT with a character-level WordPiece tokenizer, saved like a Hub model."""
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, *string.digits]
    vocab += [f"##{c}" for c in string.ascii_lowercase + string.digits] + list(string.punctuation)
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file))
    model = tiny_model(vocab_size=len(vocab), max_position_embeddings=80)
    folder = tmp_path / "tiny-bert"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_recipe_gives_defaults_and_flags_win(tmp_path):
    _, data, args, _ = parse_args(
        [
            "--task_name",
            "mrpc",
            "--model_name_or_path",
            "m",
            "--recipe",
            "--output_dir",
            str(tmp_path),
            "--learning_rate",
            "3e-5",
        ]
    )
    assert data.max_seq_length == 128
    assert args.learning_rate == 3e-5  # the flag wins
    assert args.target_sparsity == 0.5 and args.pruning_rate == 0.1 and args.rewind == "pretrained"
    assert args.per_device_train_batch_size == 32


def test_json_file(tmp_path):
    path = tmp_path / "args.json"
    path.write_text(
        json.dumps(
            {
                "task_name": "rte",
                "model_name_or_path": "m",
                "output_dir": str(tmp_path),
                "target_sparsity": 0.7,
                "rewind": "lr",
            }
        )
    )
    model, data, args, _ = parse_args([str(path)])
    assert (model.model_name_or_path, data.task_name, args.target_sparsity, args.rewind) == ("m", "rte", 0.7, "lr")


def test_missing_arguments_fail_clearly(tmp_path):
    with pytest.raises(SystemExit, match="model_name_or_path"):
        parse_args(["--task_name", "sst2", "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="task_name"):
        parse_args(["--model_name_or_path", "m", "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit):  # argparse: invalid choice
        parse_args(
            [
                "--task_name",
                "sst2",
                "--model_name_or_path",
                "m",
                "--output_dir",
                str(tmp_path),
                "--rewind",
                "sometimes",
            ]
        )


def test_usage(capsys):
    assert main([]) == 0
    assert "find-ticket" in capsys.readouterr().out
    assert main(["nonsense"]) == 2


def test_find_ticket_end_to_end_on_real_sst2_rows(tmp_path, model_dir, capsys):
    from transformers import AutoModelForSequenceClassification

    from glue_tasks import sample_dataset_dir

    out = tmp_path / "out"
    code = main(
        [
            "find-ticket",
            "--task_name",
            "sst2",
            "--data_dir",
            str(sample_dataset_dir()),
            "--model_name_or_path",
            str(model_dir),
            "--max_train_samples",
            "48",
            "--max_eval_samples",
            "24",
            "--max_seq_length",
            "64",
            "--num_train_epochs",
            "1",
            "--per_device_train_batch_size",
            "16",
            "--learning_rate",
            "1e-3",
            "--target_sparsity",
            "0.5",
            "--pruning_rate",
            "0.25",
            "--output_dir",
            str(out),
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--disable_tqdm",
            "true",
        ]
    )
    assert code == 0
    history = json.loads((out / "lottery_history.json").read_text())["rounds"]
    assert [round(r["sparsity"], 3) for r in history] == [0.0, 0.25, 0.5]
    assert all("eval_accuracy" in r["metrics"] for r in history)
    table = capsys.readouterr().out
    assert "accuracy" in table and "50.0%" in table
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    params = dict(model.named_parameters())
    zeros = sum(int((params[n] == 0).sum()) for n in history[-1]["tensor_sparsity"])
    total = sum(params[n].numel() for n in history[-1]["tensor_sparsity"])
    assert zeros / total >= 0.5


def test_same_seed_same_ticket_whatever_the_global_rng_held(tmp_path, model_dir):
    """A checkpoint without a classification head (as every Hub base model): the head the CLI initialises is part
    of θ0, so it must come from `--seed`, not from whatever the process's RNG held."""
    import torch
    from safetensors.torch import load_file
    from transformers import BertModel

    from glue_tasks import sample_dataset_dir

    base = tmp_path / "headless"
    BertModel.from_pretrained(model_dir).save_pretrained(base)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if (model_dir / name).is_file():
            (base / name).write_bytes((model_dir / name).read_bytes())
    runs = []
    for rng_state in (1, 2):
        torch.manual_seed(rng_state)  # another process: another global RNG state before the command
        out = tmp_path / f"out{rng_state}"
        flags = ["--task_name", "sst2", "--data_dir", str(sample_dataset_dir()), "--model_name_or_path", str(base)]
        flags += ["--max_train_samples", "32", "--max_eval_samples", "16", "--max_seq_length", "32"]
        flags += ["--num_train_epochs", "1", "--per_device_train_batch_size", "16", "--target_sparsity", "0.5"]
        flags += ["--pruning_rate", "0.5", "--output_dir", str(out), "--report_to", "none", "--save_strategy", "no"]
        assert main(["find-ticket", *flags, "--disable_tqdm", "true"]) == 0
        runs.append(load_file(str(out / "model" / "model.safetensors")))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.mark.parametrize("branch", ["random_prune", "random_reinit", "transfer"])
def test_branches_from_the_command_line(tmp_path, model_dir, branch):
    from transformers import AutoModelForSequenceClassification

    from glue_tasks import sample_dataset_dir
    from hf_lottery import TicketMask, prune

    ticket = prune(AutoModelForSequenceClassification.from_pretrained(model_dir), 0.4)
    ticket.save_pretrained(tmp_path / "ticket")
    out = tmp_path / "out"
    code = main(
        [
            "find-ticket",
            "--task_name",
            "sst2",
            "--data_dir",
            str(sample_dataset_dir()),
            "--model_name_or_path",
            str(model_dir),
            "--max_train_samples",
            "32",
            "--max_eval_samples",
            "16",
            "--num_train_epochs",
            "1",
            "--output_dir",
            str(out),
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--branch",
            branch,
            "--ticket",
            str(tmp_path / "ticket"),
            "--branch_seed",
            "3",
        ]
    )
    assert code == 0
    history = json.loads((out / "lottery_history.json").read_text())["rounds"]
    assert len(history) == 1 and history[0]["sparsity"] == pytest.approx(ticket.sparsity, abs=1e-3)
    found = TicketMask.from_pretrained(out / "ticket")
    if branch == "random_prune":
        assert found != ticket
    else:
        assert found == ticket


GLUE_DIR = Path(os.environ.get("HF_LOTTERY_GLUE_DIR", Path(__file__).resolve().parents[2] / "shared" / "glue"))


@pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"real GLUE files not found at {GLUE_DIR}")
@pytest.mark.parametrize("task", ["cola", "sst2", "mrpc", "stsb", "rte", "wnli"])
def test_find_ticket_on_every_task_with_files(tmp_path, model_dir, task):
    from glue_tasks import get_task

    out = tmp_path / "out"
    code = main(
        [
            "find-ticket",
            "--ignore_mismatched_sizes",
            "--task_name",
            task,
            "--data_dir",
            str(GLUE_DIR),
            "--model_name_or_path",
            str(model_dir),
            "--max_train_samples",
            "24",
            "--max_eval_samples",
            "16",
            "--max_seq_length",
            "64",
            "--num_train_epochs",
            "1",
            "--target_sparsity",
            "0.3",
            "--pruning_rate",
            "0.3",
            "--output_dir",
            str(out),
            "--report_to",
            "none",
            "--save_strategy",
            "no",
        ]
    )
    assert code == 0
    history = json.loads((out / "lottery_history.json").read_text())["rounds"]
    metric = f"eval_{get_task(task).main_metric}"
    assert len(history) == 2 and all(metric in r["metrics"] for r in history)
    assert (out / "ticket" / "README.md").is_file() and (out / "model" / "config.json").is_file()


def test_help_lists_every_option_and_version_is_printed(capsys):
    # A bare percent sign in a help string makes argparse's formatter raise.
    with pytest.raises(SystemExit) as exit_info:
        main(["find-ticket", "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert "--target_sparsity" in shown and "--pruning_rate_of" in shown and "--base_model_id" in shown
    from hf_lottery import __version__

    for argv in (["--version"], ["find-ticket", "--version"]):
        assert main(argv) == 0
        assert capsys.readouterr().out.strip() == f"hf-lottery {__version__}"


def test_no_help_string_holds_a_bare_percent_sign():
    import dataclasses
    import re

    from hf_lottery import LotteryArguments
    from hf_lottery.cli import BranchArguments, DataArguments, ModelArguments

    for cls in (LotteryArguments, ModelArguments, DataArguments, BranchArguments):
        for f in dataclasses.fields(cls):
            help_text = f.metadata.get("help", "")
            assert not re.search(r"%(?!%)", help_text.replace("%%", "")), (cls.__name__, f.name, help_text)


def test_config_files_json_recipe_yaml_and_overriding_flags(tmp_path):
    from glue_tasks import load_recipe

    recipe = load_recipe("mrpc")
    config = {"task_name": "mrpc", "model_name_or_path": "m", "output_dir": str(tmp_path), "recipe": True}
    json_file = tmp_path / "run.json"
    json_file.write_text(json.dumps({**config, "seed": 5}))
    _, _, args, _ = parse_args([str(json_file)])
    assert args.per_device_train_batch_size == recipe["per_device_train_batch_size"]  # the recipe is applied
    assert args.seed == 5  # the file wins over the recipe
    # flags win over the file
    _, _, args, _ = parse_args([str(json_file), "--seed", "9", "--target_sparsity", "0.3"])
    assert (args.seed, args.target_sparsity) == (9, 0.3)
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(
        "task_name: rte\nmodel_name_or_path: m\n"
        f"output_dir: {tmp_path}\ntarget_sparsity: 0.7\nrewind: lr\nprune_modules:\n  - '.*query.*'\n  - '.*key.*'\n"
    )
    model, data, args, _ = parse_args([str(yaml_file), "--rewind", "none"])
    assert (model.model_name_or_path, data.task_name, args.target_sparsity) == ("m", "rte", 0.7)
    assert args.rewind == "none" and args.prune_modules == [".*query.*", ".*key.*"]


def test_bad_config_files_fail_naming_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(SystemExit, match="bad.yaml must hold a mapping"):
        parse_args([str(bad)])
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SystemExit, match="Cannot read the config file .*broken.json"):
        parse_args([str(broken)])
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SystemExit, match="deep.json: it is nested too deeply"):
        parse_args([str(deep)])
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"task_name": "rte", "model_name_or_path": "m", "no_such_option": 1}))
    with pytest.raises((SystemExit, ValueError), match="no_such_option"):
        parse_args([str(unknown)])
