"""Saving and loading shrunk models: with hf_lottery, without it (remote code), and transformers-4 checkpoints."""

import contextlib
import json
import logging as pylogging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from structured_helpers import FAMILIES, HEAD_SIZE, HEADS, inputs, logits, tiny_config, tiny_model, zeroed
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from transformers.utils import logging

from hf_lottery import StructureRecordError
from hf_lottery.constants import STRUCTURED_MODELING_FILE
from hf_lottery.integrations.transformers import hooks_installed, install_hooks
from hf_lottery.structured import prune_heads, prune_neurons, pruned_structure

torch.set_num_threads(1)

HEADS_TO_PRUNE = {0: [1, 2], 1: list(range(HEADS))}  # layer 1 loses every head
NEURONS_TO_PRUNE = {0: [3], 2: list(range(0, 37, 2))}


@contextlib.contextmanager
def transformers_warnings():
    """Collect every warning transformers logs and every Python warning raised inside the block."""
    records: list[str] = []

    class Collect(pylogging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect(level=pylogging.WARNING)
    root = logging.get_logger()  # the library's root logger: every transformers module logs through it
    root.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield records
        records.extend(str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning))
    finally:
        root.removeHandler(handler)


def shrunk(family, model_class=AutoModelForSequenceClassification):
    model = tiny_model(family, model_class=model_class)
    prune_heads(model, HEADS_TO_PRUNE)
    prune_neurons(model, NEURONS_TO_PRUNE)
    return model


def test_import_installs_hooks_once():
    assert hooks_installed()
    install_hooks()  # idempotent
    from transformers import PreTrainedModel

    assert not hasattr(PreTrainedModel.post_init.__wrapped__, "__wrapped__")


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_same_logits_without_warnings(tmp_path, family):
    model = shrunk(family)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["pruned_heads"] == {str(k): v for k, v in HEADS_TO_PRUNE.items()}
    assert config["pruned_neurons"] == {str(k): v for k, v in NEURONS_TO_PRUNE.items()}
    assert config["num_attention_heads" if family != "distilbert" else "n_heads"] == HEADS  # the original count
    assert (tmp_path / STRUCTURED_MODELING_FILE).is_file()
    stem = Path(STRUCTURED_MODELING_FILE).stem
    assert config["auto_map"]["AutoModelForSequenceClassification"] == f"{stem}.{type(model).__name__}"

    with transformers_warnings() as messages:
        loaded, info = AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert messages == []
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    assert type(loaded) is type(model)
    assert loaded.config.pruned_heads == HEADS_TO_PRUNE
    assert pruned_structure(loaded) == pruned_structure(model)
    batch = inputs()
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("family", "auto_class"),
    [
        ("bert", AutoModel),
        ("bert", AutoModelForMaskedLM),
        ("roberta", AutoModelForMaskedLM),
        ("distilbert", AutoModel),
    ],
)
def test_other_auto_classes(tmp_path, family, auto_class):
    model = shrunk(family, model_class=auto_class)
    model.save_pretrained(tmp_path)
    with transformers_warnings() as messages:
        loaded = auto_class.from_pretrained(tmp_path)
    assert messages == []
    batch = inputs()
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), atol=0, rtol=0)


def test_base_model_from_a_task_checkpoint(tmp_path):
    model = shrunk("electra")
    model.save_pretrained(tmp_path)
    with transformers_warnings() as messages:
        base = AutoModel.from_pretrained(tmp_path)
    # The task head's weights are reported unexpected (which also shows the warnings are captured), nothing else.
    report = "\n".join(messages)
    assert "UNEXPECTED" in report and "MISSING" not in report and "MISMATCH" not in report
    torch.testing.assert_close(
        base(**inputs()).last_hidden_state, model.base_model(**inputs()).last_hidden_state, atol=0, rtol=0
    )


def test_from_config_and_constructor_rebuild_the_structure():
    config = tiny_config("bert")
    config.pruned_heads = {"0": [3]}  # as read from JSON
    model = AutoModelForTokenClassification.from_config(config)
    assert model.bert.encoder.layer[0].attention.self.query.out_features == (HEADS - 1) * HEAD_SIZE
    assert model.config.pruned_heads == {0: [3]}


def test_unpruned_model_saves_plainly(tmp_path):
    tiny_model("bert").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "auto_map" not in config and "pruned_heads" not in config
    assert not (tmp_path / STRUCTURED_MODELING_FILE).exists()


def test_non_main_process_writes_no_modeling_file(tmp_path):
    shrunk("bert").save_pretrained(tmp_path, is_main_process=False)
    assert not (tmp_path / STRUCTURED_MODELING_FILE).exists()


def test_inconsistent_config_is_an_error():
    model = shrunk("bert")
    model.config.pruned_heads = {0: [1]}  # claims less than the blocks lost
    from hf_lottery.structured.shrink import apply_config_structure_

    with pytest.raises(ValueError, match=r"Layer 0 has already lost \[2\]"):
        apply_config_structure_(model)


def test_bad_recorded_structure_is_an_error():
    config = tiny_config("distilbert")
    config.pruned_neurons = {"0": [37]}
    with pytest.raises(
        ValueError, match=r"`pruned_neurons`: layer 0 lists 37, which is not a valid index \(0\.\.36\)"
    ):
        AutoModel.from_config(config)


@pytest.mark.parametrize(
    ("field", "record", "message"),
    [
        ("pruned_neurons", {"0": [37]}, r"layer 0 lists 37, which is not a valid index"),
        ("pruned_heads", {"9": [0]}, r"layer 9 is out of range"),
        ("pruned_layers", [0, 0], r"distinct non-negative layer indices"),
        ("pruned_layers", [7], r"names layer 7, but the unpruned model had 4 layers"),
    ],
)
def test_a_bad_record_in_config_json_names_the_file(tmp_path, field, record, message):
    shrunk("bert").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[field] = record
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(StructureRecordError, match=rf"{tmp_path}/config\.json: .*{message}.*Fix or remove the record"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path)
    with pytest.raises(StructureRecordError, match=message):  # built from the config alone: no file to name
        AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(tmp_path))


# Transformers 4 checkpoints: `config.pruned_heads` (original numbering) and Q/K/V/O shrunk, no neurons removed.
LEGACY_KEYS = {
    "bert": ("bert.encoder.layer.{}.attention.self.{}", ("query", "key", "value"), "attention.output.dense"),
    "distilbert": ("distilbert.transformer.layer.{}.attention.{}", ("q_lin", "k_lin", "v_lin"), "out_lin"),
}


def write_legacy_checkpoint(model, folder: Path, heads: dict[int, list[int]]) -> None:
    """Shrink a dense state dict by hand the way transformers 4 `prune_heads` did, and write it with a v4 config."""
    family = model.config.model_type
    pattern, qkv, out = LEGACY_KEYS[family]
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    for layer, removed in heads.items():
        rows = [h * HEAD_SIZE + j for h in range(HEADS) if h not in removed for j in range(HEAD_SIZE)]
        for name in qkv:
            for kind in ("weight", "bias"):
                key = pattern.format(layer, name) + "." + kind
                state[key] = state[key][rows].contiguous()
        if family == "bert":
            key = f"bert.encoder.layer.{layer}.{out}.weight"
        else:
            key = pattern.format(layer, out) + ".weight"
        state[key] = state[key][:, rows].contiguous()
    folder.mkdir(parents=True)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    config = model.config.to_dict()
    for key in ("dtype", "transformers_version", "auto_map", "pruned_neurons"):
        config.pop(key, None)
    config.update(
        {
            "pruned_heads": {str(k): v for k, v in heads.items()},
            "transformers_version": "4.44.2",
            "torch_dtype": "float32",
            "_name_or_path": "legacy-pruned",
            "position_embedding_type": "absolute",
            "architectures": [type(model).__name__],
        }
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2))


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_transformers4_checkpoint_with_pruned_heads(tmp_path, family):
    dense = tiny_model(family)
    heads = {0: [3, 0], 2: [1]}
    write_legacy_checkpoint(dense, tmp_path / "legacy", heads)
    with transformers_warnings() as messages:
        loaded, info = AutoModelForSequenceClassification.from_pretrained(
            tmp_path / "legacy", output_loading_info=True
        )
    assert messages == []
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    assert loaded.config.pruned_heads == {0: [0, 3], 2: [1]}
    batch = inputs()
    torch.testing.assert_close(logits(loaded, batch), logits(zeroed(dense, heads), batch), atol=1e-5, rtol=1e-5)
    # Re-saving upgrades it: auto_map and the modeling file are written.
    loaded.save_pretrained(tmp_path / "upgraded")
    assert "auto_map" in json.loads((tmp_path / "upgraded" / "config.json").read_text())


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_lottery"] = None  # hf_lottery must not be importable here
    try:
        import hf_lottery  # noqa: F401
        raise SystemExit("hf_lottery is importable")
    except ImportError:
        pass
    import torch
    import transformers

    results = {}
    for folder, auto_class in json.loads(sys.argv[1]):
        model = getattr(transformers, auto_class).from_pretrained(folder, trust_remote_code=True)
        ref = torch.load(folder + "/reference.pt")
        with torch.no_grad():
            out = model(**ref["inputs"])
        got = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
        results[folder] = [type(model).__module__, float((got - ref["output"]).abs().max())]
    print(json.dumps(results))
    """
)


def test_loads_without_hf_lottery_through_remote_code(tmp_path):
    cases = []
    batch = inputs()
    for family in FAMILIES:
        model = shrunk(family)
        cases.append((model, tmp_path / family, "AutoModelForSequenceClassification"))
    cases.append((shrunk("bert", AutoModelForMaskedLM), tmp_path / "bert-mlm", "AutoModelForMaskedLM"))
    cases.append((shrunk("roberta", AutoModel), tmp_path / "roberta-base", "AutoModel"))
    legacy_dense = tiny_model("bert")
    write_legacy_checkpoint(legacy_dense, tmp_path / "legacy", {1: [0, 2]})
    cases.append(
        (
            AutoModelForSequenceClassification.from_pretrained(tmp_path / "legacy"),
            tmp_path / "upgraded",
            "AutoModelForSequenceClassification",
        )
    )
    for model, folder, _ in cases:
        model.save_pretrained(folder)
        torch.save({"inputs": batch, "output": logits(model, batch)}, folder / "reference.pt")

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    args = json.dumps([[str(folder), auto_class] for _, folder, auto_class in cases])
    proc = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for folder, (module, diff) in results.items():
        assert module.startswith("transformers_modules.") and module.endswith(Path(STRUCTURED_MODELING_FILE).stem)
        assert diff < 1e-5, folder
