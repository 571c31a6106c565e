"""Ticket folders: save/load, config, atomic writes, load_model (θ0 ⊙ m), sparse checkpoints and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hf_lottery import TicketConfig, TicketMask, prune, save_sparse_model
from hf_lottery.constants import (
    SPARSITY_PLOT_NAME,
    TICKET_CARD_NAME,
    TICKET_CONFIG_NAME,
    TICKET_FORMAT_VERSION,
    TICKET_MASK_NAME,
)
from hf_lottery.testing_utils import tiny_model
from hf_lottery.ticket.fingerprint import combine_digests, tensor_digest

HISTORY = [
    {
        "round": r,
        "sparsity": s,
        "target_sparsity": s,
        "metrics": {"eval_loss": 0.5 + r / 10, "eval_accuracy": 0.9 - r / 20},
        "train_loss": 0.4,
        "steps": 8,
        "seconds": 1.25,
        "tensor_sparsity": {},
    }
    for r, s in enumerate([0.0, 0.3, 0.5])
]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base") / "tiny-bert"
    tiny_model(seed=0).save_pretrained(path)
    return path


def load_base(path: Path, **kwargs):
    return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)


def make_ticket(model, sparsity: float = 0.5, **config_kwargs) -> TicketMask:
    mask = prune(model, sparsity)
    config = TicketConfig.from_model(
        model,
        mask,
        lottery_args={"pruning_method": "magnitude", "target_sparsity": sparsity, "pruning_rate": 0.2},
        history=HISTORY,
        task="sst2",
        dataset="nyu-mll/glue",
        **config_kwargs,
    )
    return mask.with_metadata(config.to_dict())


@pytest.fixture
def ticket(base_dir) -> TicketMask:
    return make_ticket(load_base(base_dir))


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.parent.iterdir() if ".tmp" in p.name]


# -- Round trip and format ------------------------------------------------------------------------------------
def test_save_and_load_round_trip(ticket, tmp_path):
    out = ticket.save_pretrained(tmp_path / "ticket")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [TICKET_CONFIG_NAME, TICKET_MASK_NAME, TICKET_CARD_NAME, SPARSITY_PLOT_NAME]
    )
    loaded = TicketMask.from_pretrained(out)
    assert loaded == ticket and list(loaded) == list(ticket)
    config = loaded.config
    assert config.base_fingerprint == ticket.config.base_fingerprint
    assert config.history == HISTORY and config.task == "sst2" and config.pruning_method == "magnitude"
    assert config.sparsity == pytest.approx(ticket.sparsity)
    assert loaded.metadata == config.to_dict()  # .metadata carries the config
    assert leftovers(out) == []


def test_config_file_contents(ticket, base_dir, tmp_path):
    out = ticket.save_pretrained(tmp_path / "ticket")
    text = (out / TICKET_CONFIG_NAME).read_text()
    data = json.loads(text)
    assert list(data) == sorted(data)  # sorted keys
    for key in (
        "base_model_name_or_path",
        "revision",
        "base_fingerprint",
        "prunable_parameters",
        "task",
        "pruning_method",
        "lottery_args",
        "history",
        "hf_lottery_version",
        "format_version",
    ):
        assert key in data, key
    assert data["format_version"] == TICKET_FORMAT_VERSION
    assert data["base_model_name_or_path"] == str(base_dir)
    assert data["architecture"] == "BertForSequenceClassification"
    assert data["model_kwargs"] == {"num_labels": 2}
    assert [p["name"] for p in data["prunable_parameters"]] == list(ticket)
    assert [p["shape"] for p in data["prunable_parameters"]] == [list(m.shape) for m in ticket.values()]
    assert data["lottery_args"]["pruning_rate"] == 0.2


def test_fingerprint_definition(base_dir):
    """sha256 over 'name\\tshape\\tdigest\\n' lines sorted by name; digest = sha256 of float32 LE bytes."""
    import hashlib

    model = load_base(base_dir)
    ticket = make_ticket(model)
    params = dict(model.named_parameters())
    lines = ""
    for name in sorted(ticket):
        array = params[name].detach().float().contiguous().numpy().astype("<f4")
        digest = hashlib.sha256(array.tobytes()).hexdigest()
        lines += f"{name}\t{'x'.join(map(str, params[name].shape))}\t{digest}\n"
        assert digest == tensor_digest(params[name])
    assert ticket.config.base_fingerprint == "sha256:" + hashlib.sha256(lines.encode()).hexdigest()
    # Exact casts do not change it: the same values stored in bfloat16 or float32 hash alike.
    value = torch.randn(5, 3).bfloat16()
    assert tensor_digest(value) == tensor_digest(value.float())
    assert combine_digests([{"name": "a", "shape": [2], "sha256": None}]) is None


def test_from_model_uses_given_theta0(base_dir):
    model = load_base(base_dir)
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # "trained"
    mask = prune(model, 0.4)
    config = TicketConfig.from_model(model, mask, weights=theta0)
    assert config.base_fingerprint == make_ticket(load_base(base_dir), 0.4).config.base_fingerprint


def test_unknown_metadata_survives_round_trip(ticket, tmp_path):
    extra = ticket.with_metadata(run_name="sweep-7", future_field={"a": 1})
    loaded = TicketMask.from_pretrained(extra.save_pretrained(tmp_path / "t"))
    assert loaded.metadata["run_name"] == "sweep-7" and loaded.config.extra["future_field"] == {"a": 1}


def test_ticket_without_metadata_saves(tmp_path):
    mask = TicketMask({"w": torch.rand(10, 3) > 0.5, "v": torch.ones(7, dtype=torch.bool)})
    loaded = TicketMask.from_pretrained(mask.save_pretrained(tmp_path / "bare"))
    assert loaded == mask and loaded.config.base_fingerprint is None and loaded.config.sparsity is not None
    assert not (tmp_path / "bare" / SPARSITY_PLOT_NAME).exists()


def test_subfolder_and_non_main_process(ticket, tmp_path):
    ticket.save_pretrained(tmp_path / "repo" / "tickets" / "s50")
    assert TicketMask.from_pretrained(tmp_path / "repo", subfolder="tickets/s50") == ticket
    assert ticket.save_pretrained(tmp_path / "other", is_main_process=False) == tmp_path / "other"
    assert not (tmp_path / "other").exists()


# -- Atomic writes --------------------------------------------------------------------------------------------
def test_overwrite_existing_folder(ticket, base_dir, tmp_path):
    out = tmp_path / "ticket"
    ticket.save_pretrained(out)
    (out / "notes.txt").write_text("mine")
    denser = make_ticket(load_base(base_dir), 0.2)
    denser.save_pretrained(out, create_card=False)
    assert TicketMask.from_pretrained(out) == denser
    assert (out / "notes.txt").read_text() == "mine"  # other files untouched
    assert not (out / TICKET_CARD_NAME).exists()  # a stale card would describe the old ticket
    assert leftovers(out) == []
    assert oct(out.stat().st_mode & 0o777) != "0o700" and (out / TICKET_MASK_NAME).stat().st_mode & 0o044


def test_failed_save_leaves_nothing(ticket, base_dir, tmp_path, monkeypatch):
    import hf_lottery.ticket.folder as serialization

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    out = tmp_path / "ticket"
    monkeypatch.setattr(serialization, "save_masks", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        ticket.save_pretrained(out)
    assert not out.exists() and leftovers(out) == []
    monkeypatch.undo()
    ticket.save_pretrained(out)
    monkeypatch.setattr(serialization, "save_masks", boom)
    with pytest.raises(RuntimeError):
        make_ticket(load_base(base_dir), 0.2).save_pretrained(out)
    assert TicketMask.from_pretrained(out) == ticket and leftovers(out) == []


def test_half_replaced_folder_is_detected(ticket, base_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ticket.save_pretrained(a)
    make_ticket(load_base(base_dir), 0.2).save_pretrained(b)
    os.replace(b / TICKET_MASK_NAME, a / TICKET_MASK_NAME)  # a save killed before the config was replaced
    with pytest.raises(ValueError, match="partly overwritten"):
        TicketMask.from_pretrained(a)


# -- Bad input ------------------------------------------------------------------------------------------------
def test_unknown_format_version(ticket, tmp_path):
    out = ticket.save_pretrained(tmp_path / "t")
    data = json.loads((out / TICKET_CONFIG_NAME).read_text())
    data["format_version"] = TICKET_FORMAT_VERSION + 1
    (out / TICKET_CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"format version {TICKET_FORMAT_VERSION + 1}.*Upgrade hf_lottery"):
        TicketMask.from_pretrained(out)
    (out / TICKET_CONFIG_NAME).write_text(json.dumps({"base_model_name_or_path": "x"}))
    with pytest.raises(ValueError, match="not an hf_lottery ticket config"):
        TicketMask.from_pretrained(out)
    (out / TICKET_CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TicketMask.from_pretrained(out)
    data["format_version"] = TICKET_FORMAT_VERSION
    data["prunable_parameters"] = "everything"
    (out / TICKET_CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'prunable_parameters' must be a list"):
        TicketMask.from_pretrained(out)
    with pytest.raises(TypeError, match="revison"):
        TicketMask.from_pretrained(out, revison="main")


def test_truncated_and_corrupted_mask_file(ticket, tmp_path):
    out = ticket.save_pretrained(tmp_path / "t")
    mask_file = out / TICKET_MASK_NAME
    raw = mask_file.read_bytes()
    mask_file.write_bytes(raw[: len(raw) - 40])
    with pytest.raises(ValueError, match=r"ticket_mask\.safetensors.*tensor '.*weight'.*truncated"):
        TicketMask.from_pretrained(out)
    damaged = bytearray(raw)
    damaged[-1] ^= 0xFF
    mask_file.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"Corrupted mask file .*ticket_mask\.safetensors, tensor '.*weight'"):
        TicketMask.from_pretrained(out)


def test_incomplete_or_missing_folder(ticket, tmp_path):
    out = ticket.save_pretrained(tmp_path / "t")
    (out / TICKET_CONFIG_NAME).unlink()
    with pytest.raises(ValueError, match="not completely written"):
        TicketMask.from_pretrained(out)
    with pytest.raises(ValueError, match="not completely written"):
        TicketMask.from_model_folder(out)
    (out / TICKET_MASK_NAME).unlink()
    assert TicketMask.from_model_folder(out) is None
    assert TicketMask.from_model_folder(tmp_path / "nowhere") is None


def test_wrong_model_names_and_shapes(ticket, tmp_path):
    out = ticket.save_pretrained(tmp_path / "t")
    loaded = TicketMask.from_pretrained(out)
    roberta = tiny_model("roberta")
    with pytest.raises(ValueError, match=r"'bert\.encoder\.layer\.0\.attention\.self\.query\.weight'"):
        loaded.load_model(AutoModelForSequenceClassification, base=roberta)
    wider_dir = tmp_path / "wider"
    tiny_model(intermediate_size=64).save_pretrained(wider_dir)
    with pytest.raises(ValueError, match=r"Shape mismatch for 'bert\.encoder\.layer\.0\.intermediate\.dense\.weight'"):
        loaded.load_model(AutoModelForSequenceClassification, base=wider_dir)


def test_base_with_other_weights_is_refused(ticket, tmp_path):
    other_dir = tmp_path / "other"
    tiny_model(seed=1).save_pretrained(other_dir)
    with pytest.raises(
        ValueError, match=r"base weights differ.*first 'bert\.encoder\.layer\.0\.attention\.self\.query"
    ):
        ticket.load_model(AutoModelForSequenceClassification, base=other_dir)
    model = ticket.load_model(AutoModelForSequenceClassification, base=other_dir, verify_base=False)
    for name, mask in ticket.items():
        assert not dict(model.named_parameters())[name][~mask].any()


def test_one_tensor_changed_is_named(ticket, base_dir):
    model = load_base(base_dir)
    name = list(ticket)[5]
    with torch.no_grad():
        dict(model.named_parameters())[name][0, 0] += 1e-3
    with pytest.raises(ValueError, match=rf"1 of {len(ticket)} prunable tensors differ, first '{name}'"):
        ticket.load_model(AutoModelForSequenceClassification, base=model)


# -- load_model -----------------------------------------------------------------------------------------------
def test_load_model_is_theta0_times_mask(ticket, base_dir, tmp_path):
    loaded = TicketMask.from_pretrained(ticket.save_pretrained(tmp_path / "t"))
    model = loaded.load_model(AutoModelForSequenceClassification)  # from the recorded base path
    reference = load_base(base_dir)
    params, ref = dict(model.named_parameters()), dict(reference.named_parameters())
    for name, p in params.items():
        expected = ref[name] * ticket[name] if name in ticket else ref[name]
        if name.startswith("classifier"):  # the new head is initialised at random by from_pretrained
            continue
        assert torch.equal(p, expected), name


def test_load_model_without_recorded_base(tmp_path):
    mask = TicketMask({"w": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="pass `base=`"):
        mask.load_model(AutoModelForSequenceClassification)


# -- Sparse checkpoints ---------------------------------------------------------------------------------------
VANILLA = r"""
import json, sys
import torch
torch.set_num_threads(1)
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()
ids = torch.tensor([[3, 7, 9, 5, 11, 2]])
with torch.no_grad():
    logits = model(input_ids=ids).logits
zeros = {n: int((p == 0).sum()) for n, p in model.named_parameters()}
assert "hf_lottery" not in sys.modules
print(json.dumps({"logits": logits.tolist(), "zeros": zeros}))
"""


def test_sparse_model_loads_without_hf_lottery(ticket, base_dir, tmp_path):
    model = load_base(base_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = save_sparse_model(model, ticket, tmp_path / "sparse")
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # the model is not modified
    assert {"config.json", "model.safetensors", TICKET_CONFIG_NAME, TICKET_MASK_NAME} <= {
        p.name for p in out.iterdir()
    }
    assert TicketMask.from_model_folder(out) == ticket

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, "-c", VANILLA, str(out)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])

    torch.set_num_threads(1)
    ticket.apply_(model)
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([[3, 7, 9, 5, 11, 2]])).logits
    assert torch.equal(torch.tensor(result["logits"]), expected)
    for name, mask in ticket.items():
        assert result["zeros"][name] >= int((~mask).sum())


def test_sparse_folder_overwrite_keeps_other_files(ticket, base_dir, tmp_path):
    out = tmp_path / "sparse"
    model = load_base(base_dir)
    save_sparse_model(model, ticket, out, max_shard_size="20KB")
    assert (out / "model.safetensors.index.json").exists()
    (out / "tokenizer.json").write_text("{}")
    denser = make_ticket(model, 0.2)
    save_sparse_model(model, denser, out)
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and not any(n.startswith("model-") for n in names), names
    assert "model.safetensors.index.json" not in names and "tokenizer.json" in names
    assert TicketMask.from_model_folder(out) == denser and leftovers(out) == []
    reloaded = load_base(out)
    assert not dict(reloaded.named_parameters())[list(denser)[0]][~denser[list(denser)[0]]].any()


def test_sparse_model_rejects_mismatched_mask(ticket, tmp_path):
    with pytest.raises(ValueError, match="bert.encoder.layer.0.attention.self.query.weight"):
        save_sparse_model(tiny_model("roberta"), ticket, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_config_records_lottery_arguments(base_dir, tmp_path):
    from hf_lottery.training.arguments import LotteryArguments

    args = LotteryArguments(output_dir=str(tmp_path / "o"), target_sparsity=0.6, rewind="lr", report_to="none")
    model = load_base(base_dir)
    mask = prune(model, 0.6)
    config = TicketConfig.from_model(model, mask, lottery_args=args, history=HISTORY, metric="eval_accuracy")
    assert config.pruning_method == "magnitude"
    assert config.lottery_args["target_sparsity"] == 0.6 and config.lottery_args["rewind"] == "lr"
    assert "learning_rate" in config.lottery_args and "output_dir" not in config.lottery_args
    loaded = TicketMask.from_pretrained(mask.with_metadata(config.to_dict()).save_pretrained(tmp_path / "t"))
    assert loaded.config.lottery_args["lr_scheduler_type"] == "linear"  # enums stored as their value
