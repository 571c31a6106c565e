"""CPU export (compact + int8), its folder and loader, the speed figures and the card's Speed section."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

import hf_lottery.deploy.quantize as quantize_module
from hf_lottery import (
    SpeedReport,
    TicketConfig,
    TicketMask,
    export_for_cpu,
    load_for_cpu,
    measure_speed,
    pad_neurons,
    prune_heads,
    pruned_structure,
    write_speed_card,
)
from hf_lottery.cli import main as cli_main
from hf_lottery.cli import speed as cli_speed
from hf_lottery.constants import CPU_EXPORT_CONFIG_NAME, SPEED_FIGURES_NAME, TICKET_CARD_NAME
from hf_lottery.deploy import available_backends, read_export_config, unpruned_reference
from hf_lottery.deploy.quantize import quantize_linears_, resolve_backend
from hf_lottery.structured import encoder_matmul_flops
from hf_lottery.structured.imp import compact_by_mask, prune_structured
from hf_lottery.testing_utils import tiny_model
from hf_lottery.ticket.card import render_ticket_card, splice_speed_section

# int8 dynamic quantization of every Linear of the tiny model: the largest logit error seen over seeds is ~5e-4
# (logits ~2e-2) and ~0.05 on the LayerNorm-ed hidden states (~1); the bounds leave a 10x / 4x margin.
INT8_LOGITS_ATOL = 5e-3
INT8_HIDDEN_ATOL = 0.2
SEQ = 16
BACKENDS = available_backends()


def inputs(batch: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    ids = torch.randint(4, 64, (batch, SEQ), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def structured_ticket(family: str = "bert", seed: int = 0) -> tuple[nn.Module, TicketMask]:
    """A tiny model with half of its heads and neurons zeroed by a structured mask (as structured IMP leaves it)."""
    model = tiny_model(family, seed=seed).eval()
    mask = prune_structured(model, 0.5, "head+neuron")
    mask.apply_(model)
    return model, mask


@torch.inference_mode()
def outputs(model: nn.Module, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(**inputs(**kwargs), output_hidden_states=True)
    return out.logits, out.hidden_states[-1]


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_fp32_export_is_the_compacted_model(family):
    model, mask = structured_ticket(family)
    exported = export_for_cpu(model, mask=mask, quantize=None, neuron_multiple_of=None)
    compacted = compact_by_mask(model, mask).eval()
    assert pruned_structure(exported) == pruned_structure(compacted)
    assert sum(len(v) for v in pruned_structure(exported)["heads"].values()) == 4  # half of 2 layers x 4 heads
    for a, b in zip(outputs(exported), outputs(compacted)):
        assert torch.equal(a, b)
    torch.testing.assert_close(outputs(exported)[0], outputs(model)[0], atol=1e-6, rtol=1e-5)
    assert sum(p.numel() for p in exported.parameters()) < sum(p.numel() for p in model.parameters())
    assert pruned_structure(model) == {"heads": {}, "neurons": {}}  # the input keeps its shapes


def test_export_infers_dead_groups_of_an_already_shrunk_model():
    model = tiny_model().eval()
    prune_heads(model, {0: [1]})
    head_size = 8
    with torch.no_grad():  # original head 3 sits at position 2 after head 1 went; its output columns are zeroed
        model.bert.encoder.layer[0].attention.output.dense.weight[:, 2 * head_size : 3 * head_size] = 0
        model.bert.encoder.layer[1].output.dense.weight[:, [0, 47]] = 0
    exported = export_for_cpu(model, quantize=None, neuron_multiple_of=None)
    assert pruned_structure(exported) == {"heads": {0: [1, 3]}, "neurons": {1: [0, 47]}}
    torch.testing.assert_close(outputs(exported)[0], outputs(model)[0], atol=1e-6, rtol=1e-5)
    assert pruned_structure(model) == {"heads": {0: [1]}, "neurons": {}}  # the input is not modified


@pytest.mark.parametrize("multiple", [16, 8])
def test_export_pads_the_feed_forward_widths(tmp_path, multiple):
    model, mask = structured_ticket()
    unpadded = export_for_cpu(model, mask=mask, quantize=None, neuron_multiple_of=None)
    exported = export_for_cpu(model, tmp_path / "export", mask=mask, quantize=None, neuron_multiple_of=multiple)
    before = [layer.intermediate.dense.out_features for layer in unpadded.bert.encoder.layer]
    after = [layer.intermediate.dense.out_features for layer in exported.bert.encoder.layer]
    assert any(n % multiple for n in before)  # the tiny ticket has ragged widths to pad
    total = model.config.intermediate_size
    assert after == [min(-(-n // multiple) * multiple, total) for n in before]
    assert pruned_structure(exported)["heads"] == pruned_structure(unpadded)["heads"]
    for a, b in zip(outputs(exported), outputs(unpadded)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert json.loads((tmp_path / "export" / CPU_EXPORT_CONFIG_NAME).read_text())["neuron_multiple_of"] == multiple
    loaded = load_for_cpu(tmp_path / "export")
    assert [layer.intermediate.dense.out_features for layer in loaded.bert.encoder.layer] == after
    assert torch.equal(outputs(loaded)[0], outputs(exported)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_export_within_tolerance(backend):
    model, mask = structured_ticket()
    compacted = compact_by_mask(model, mask).eval()
    exported = export_for_cpu(model, mask=mask, backend=backend)
    assert not any(type(m) is nn.Linear and not _is_torchao(m) for m in exported.modules())
    logits, hidden = outputs(exported)
    ref_logits, ref_hidden = outputs(compacted)
    assert (logits - ref_logits).abs().max() <= INT8_LOGITS_ATOL
    assert (hidden - ref_hidden).abs().max() <= INT8_HIDDEN_ATOL
    assert not torch.equal(logits, ref_logits)  # it really runs in int8


def _is_torchao(module: nn.Module) -> bool:
    return type(module) is nn.Linear and type(module.weight).__module__.startswith("torchao")


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_save_and_load_round_trip(tmp_path, quantize):
    model, mask = structured_ticket()
    exported = export_for_cpu(model, tmp_path / "export", mask=mask, quantize=quantize)
    loaded = load_for_cpu(tmp_path / "export")
    for a, b in zip(outputs(loaded), outputs(exported)):
        assert torch.equal(a, b)  # re-quantizing the same fp32 weights gives the same int8 model
    assert pruned_structure(loaded) == pruned_structure(exported)
    # Without hf_lottery's loader the folder is a plain checkpoint of the compacted fp32 model.
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    fp32 = compact_by_mask(model, mask).eval()
    pad_neurons(fp32, 16)  # the export's default width quantum
    assert torch.equal(outputs(plain)[0], outputs(fp32)[0])
    files = {p.name for p in (tmp_path / "export").iterdir()}
    assert CPU_EXPORT_CONFIG_NAME in files and TICKET_CARD_NAME in files
    assert not {f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))}
    config = json.loads((tmp_path / "export" / CPU_EXPORT_CONFIG_NAME).read_text())
    assert config["quantize"] == quantize and (config["backend"] is None) == (quantize is None)
    assert ("bert.encoder.layer.0.attention.self.query" in config["modules"]) == (quantize is not None)


def test_int8_modules_keep_the_ffn_output_in_fp32(tmp_path):
    # The recipe of the README: every Linear int8 but the FFN output projections (layer.N.output.dense).
    recipe = [r"\.attention\.", r"\.intermediate\.", r"^(bert\.pooler|classifier)"]
    model, mask = structured_ticket()
    exported = export_for_cpu(model, tmp_path / "export", mask=mask, quantize="int8", modules=recipe)
    linears = {n: m for n, m in exported.named_modules() if n.startswith("bert.") or n == "classifier"}
    fp32 = {n for n, m in linears.items() if type(m) is nn.Linear and type(m.weight) is nn.Parameter}
    assert fp32 == {"bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"}
    config = json.loads((tmp_path / "export" / CPU_EXPORT_CONFIG_NAME).read_text())
    assert "bert.encoder.layer.0.intermediate.dense" in config["modules"]
    assert not any(n.endswith("layer.0.output.dense") or n.endswith("layer.1.output.dense") for n in config["modules"])
    loaded = load_for_cpu(tmp_path / "export")
    for a, b in zip(outputs(loaded), outputs(exported)):
        assert torch.equal(a, b)
    logits, _ = outputs(exported)
    assert (logits - outputs(compact_by_mask(model, mask).eval())[0]).abs().max() <= INT8_LOGITS_ATOL


def test_int8_weight_scales_are_per_channel_and_recorded(tmp_path):
    model, mask = structured_ticket()
    export_for_cpu(model, tmp_path / "export", mask=mask)
    config = json.loads((tmp_path / "export" / CPU_EXPORT_CONFIG_NAME).read_text())
    assert config["weight_scales"] == "per_channel" and config["format_version"] == 2
    fp32 = export_for_cpu(model, tmp_path / "fp32", mask=mask, quantize=None)
    assert json.loads((tmp_path / "fp32" / CPU_EXPORT_CONFIG_NAME).read_text())["weight_scales"] is None
    assert all(type(m) is nn.Linear for m in fp32.modules() if "Linear" in type(m).__name__)


class _UnevenRows(nn.Module):
    """One Linear whose output channels span three orders of magnitude, as fine-tuned FFN rows can."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 64)
        with torch.no_grad():
            self.linear.weight.mul_(torch.logspace(-2, 1, 64).unsqueeze(1))

    def forward(self, x):
        return self.linear(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_channel_scales_keep_small_rows(backend):
    torch.manual_seed(0)
    fp32, x = _UnevenRows().eval(), torch.randn(8, 64)
    expected = fp32(x)
    errors = {}
    for scales in ("per_channel", "per_tensor"):
        if backend == "torchao" and scales == "per_tensor":
            with pytest.raises(ValueError, match="per_tensor"):
                quantize_linears_(copy.deepcopy(fp32), ["linear"], backend, scales)
            continue
        int8 = copy.deepcopy(fp32)
        quantize_linears_(int8, ["linear"], backend, scales)
        # Relative error of the smallest tenth of the channels: a per-tensor scale rounds them to few levels.
        small = slice(0, 6)
        errors[scales] = ((int8(x) - expected)[:, small].norm() / expected[:, small].norm()).item()
    assert errors["per_channel"] < 0.05
    if "per_tensor" in errors:
        assert errors["per_tensor"] > 5 * errors["per_channel"]
    with pytest.raises(ValueError, match="weight_scales"):
        quantize_linears_(copy.deepcopy(fp32), ["linear"], backend, "per_row")


@pytest.mark.skipif("torch.ao" not in BACKENDS, reason="needs torch.ao.quantization")
def test_version_1_export_is_requantized_per_tensor(tmp_path):
    """An export written before `weight_scales` was recorded loads as it was made: torch.ao, one scale per tensor."""
    model, mask = structured_ticket()
    per_tensor = export_for_cpu(model, tmp_path / "export", mask=mask, backend="torch.ao", weight_scales="per_tensor")
    per_channel = export_for_cpu(model, mask=mask, backend="torch.ao")
    path = tmp_path / "export" / CPU_EXPORT_CONFIG_NAME
    config = json.loads(path.read_text())
    assert config["weight_scales"] == "per_tensor"
    del config["weight_scales"]
    path.write_text(json.dumps({**config, "format_version": 1}))
    loaded = load_for_cpu(tmp_path / "export")
    assert torch.equal(outputs(loaded)[0], outputs(per_tensor)[0])
    assert not torch.equal(outputs(loaded)[0], outputs(per_channel)[0])


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs both int8 backends")
def test_torch_dropping_the_deprecated_api(tmp_path, monkeypatch, caplog):
    model, mask = structured_ticket()
    export_for_cpu(model, tmp_path / "export", mask=mask, backend="torch.ao")
    monkeypatch.setattr(quantize_module, "_torch_ao_available", lambda: False)
    assert resolve_backend("auto") == "torchao"
    with pytest.raises(ImportError, match="torch.ao"):
        resolve_backend("torch.ao")
    loaded = load_for_cpu(tmp_path / "export")  # falls back to torchao, within the int8 tolerance
    assert any(_is_torchao(m) for m in loaded.modules())
    reference = compact_by_mask(model, mask).eval()
    assert (outputs(loaded)[0] - outputs(reference)[0]).abs().max() <= INT8_LOGITS_ATOL


def test_no_backend_at_all(monkeypatch):
    monkeypatch.setattr(quantize_module, "available_backends", lambda: [])
    with pytest.raises(ImportError, match="pip install torchao"):
        resolve_backend("auto")
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("onnx")


BAD_EXPORT_CONFIGS = {
    "not json": "{",
    "a list": "[]",
    "no version": json.dumps({"quantize": None, "architecture": "BertForSequenceClassification"}),
    "newer version": json.dumps({"format_version": 99, "quantize": None, "architecture": "X"}),
    "unknown quantization": json.dumps({"format_version": 1, "quantize": "int4", "architecture": "X"}),
    "unknown backend": json.dumps(
        {"format_version": 1, "quantize": "int8", "backend": "os.system", "architecture": "X"}
    ),
    "int8 without backend": json.dumps({"format_version": 1, "quantize": "int8", "modules": [], "architecture": "X"}),
    "unknown weight scales": json.dumps(
        {
            "format_version": 2,
            "quantize": "int8",
            "backend": "torch.ao",
            "weight_scales": "per_row",
            "modules": [],
            "architecture": "X",
        }
    ),
    "bad width quantum": json.dumps(
        {"format_version": 2, "quantize": None, "neuron_multiple_of": -16, "architecture": "X"}
    ),
    "modules not strings": json.dumps(
        {"format_version": 1, "quantize": "int8", "backend": "torch.ao", "modules": [1], "architecture": "X"}
    ),
    "not a Linear": json.dumps(
        {
            "format_version": 1,
            "quantize": "int8",
            "backend": "torch.ao",
            "modules": ["bert.embeddings"],
            "architecture": "BertForSequenceClassification",
        }
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_EXPORT_CONFIGS))
def test_bad_export_config_names_the_file(tmp_path, case):
    model, mask = structured_ticket()
    export_for_cpu(model, tmp_path / "export", mask=mask, quantize=None)
    (tmp_path / "export" / CPU_EXPORT_CONFIG_NAME).write_text(BAD_EXPORT_CONFIGS[case])
    with pytest.raises(ValueError, match=CPU_EXPORT_CONFIG_NAME):
        load_for_cpu(tmp_path / "export")


def test_missing_export_config(tmp_path):
    tiny_model().save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match=f"{CPU_EXPORT_CONFIG_NAME} is missing"):
        read_export_config(tmp_path / "plain")


def quick_speed(model, reference=None, **kwargs) -> SpeedReport:
    settings = dict(batch_sizes=(1, 4), seq_len=SEQ, threads=(1, "all"), repeats=1, warmup=0, min_time=0.0)
    return measure_speed(model, reference=reference, **{**settings, **kwargs})


def test_speed_figures_have_the_promised_fields():
    dense = tiny_model().eval()
    model, mask = structured_ticket()
    exported = export_for_cpu(model, mask=mask, quantize=None)
    threads = torch.get_num_threads()
    report = quick_speed(exported, reference=dense)
    assert torch.get_num_threads() == threads
    expected = [(t, b) for t in dict.fromkeys([1, threads]) for b in (1, 4)]
    assert [(f.threads, f.batch_size) for f in report.figures] == expected
    ideal = encoder_matmul_flops(dense, SEQ) / encoder_matmul_flops(exported, SEQ)
    assert ideal > 1.5
    for f in report.figures:
        assert f.seq_len == SEQ and f.latency_ms > 0 and f.reference_latency_ms > 0
        assert math.isclose(f.speedup, f.reference_latency_ms / f.latency_ms)
        assert math.isclose(f.flop_ideal, ideal) and math.isclose(f.flop_efficiency, f.speedup / ideal)
    assert report.cpu and report.torch_version == torch.__version__ and report.all_threads == threads
    assert report.model_flops == encoder_matmul_flops(exported, SEQ)
    data = json.loads(json.dumps(report.to_dict()))
    assert SpeedReport.from_dict(data) == report


def test_speed_without_reference_and_bad_settings():
    report = quick_speed(tiny_model(), threads=(1,), batch_sizes=(2,))
    (figure,) = report.figures
    assert figure.reference_latency_ms is None and figure.speedup is None and figure.flop_ideal is None
    with pytest.raises(ValueError, match="max_position_embeddings"):
        quick_speed(tiny_model(), seq_len=128)
    with pytest.raises(ValueError, match="threads"):
        quick_speed(tiny_model(), threads=(0,))


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"cpu": "c"},
        {"figures": "x", "cpu": "c", "torch_version": "t", "all_threads": 1, "repeats": 1},
        {"figures": [{"threads": 1}], "cpu": "c", "torch_version": "t", "all_threads": 1, "repeats": 1},
        {"figures": [], "cpu": "c", "torch_version": "t", "all_threads": "2", "repeats": 1},
        {"figures": [], "cpu": "c", "torch_version": "t", "all_threads": 2, "repeats": 1, "load_average": "high"},
    ],
)
def test_speed_figures_from_untrusted_json(bad):
    with pytest.raises(ValueError, match="Speed figures"):
        SpeedReport.from_dict(bad)


def test_export_writes_the_speed_card(tmp_path):
    dense = tiny_model().eval()
    model, mask = structured_ticket()
    exported = export_for_cpu(
        model, tmp_path / "export", mask=mask, reference=dense, measure=True, speed_kwargs=_speed_kwargs()
    )
    report = exported.speed_report
    assert json.loads((tmp_path / "export" / SPEED_FIGURES_NAME).read_text()) == report.to_dict()
    card = (tmp_path / "export" / TICKET_CARD_NAME).read_text()
    assert card.count("## Speed") == 1
    rows = [line for line in card.splitlines() if line.startswith("| ") and "×" in line]
    assert len(rows) == len(report.figures)
    assert report.cpu in card and f"torch {torch.__version__}" in card
    assert "library_name: hf_lottery" in card


def _speed_kwargs() -> dict:
    return dict(batch_sizes=(1, 4), seq_len=SEQ, threads=(1,), repeats=1, warmup=0, min_time=0.0)


def test_write_speed_card_replaces_the_section(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / TICKET_CARD_NAME).write_text("# Model\n\nIntro.\n\n## Files\n\n- config.json\n")
    first = quick_speed(tiny_model(), threads=(1,), batch_sizes=(1,))
    second = quick_speed(tiny_model(), threads=(1,), batch_sizes=(1, 2))
    write_speed_card(folder, first)  # appended
    card = (folder / TICKET_CARD_NAME).read_text()
    assert card.startswith("# Model\n\nIntro.\n\n## Files\n\n- config.json\n\n## Speed\n")
    (folder / TICKET_CARD_NAME).write_text(card.replace("## Files\n\n- config.json\n\n", "") + "\n## Files\n\nx\n")
    write_speed_card(folder, second)  # replaced in place
    card = (folder / TICKET_CARD_NAME).read_text()
    assert card.count("## Speed") == 1 and card.index("## Speed") < card.index("## Files") and card.endswith("x\n")
    assert len([line for line in card.splitlines() if line.startswith("| 1 | ")]) == 2
    assert json.loads((folder / SPEED_FIGURES_NAME).read_text()) == second.to_dict()
    removed = splice_speed_section(card, None)
    assert "## Speed" not in removed and removed.startswith("# Model\n\nIntro.\n\n## Files")
    empty = tmp_path / "empty"
    empty.mkdir()
    write_speed_card(empty, first.to_dict())
    assert (empty / TICKET_CARD_NAME).read_text().startswith("## Speed\n")


def test_ticket_card_speed_section():
    mask = TicketMask(
        {"bert.encoder.layer.0.output.dense.weight": torch.ones(4, 4, dtype=torch.bool)},
        metadata=TicketConfig(base_model_name_or_path="org/tiny").to_dict(),
    )
    report = quick_speed(tiny_model(), threads=(1,), batch_sizes=(1,))
    assert "## Speed" not in str(render_ticket_card(mask))
    card = str(render_ticket_card(mask, speed=report.to_dict()))
    assert card.count("## Speed") == 1 and card.index("## Speed") < card.index("## Files")


def test_cli_speed(tmp_path, capsys):
    dense = tiny_model().eval()
    dense.save_pretrained(tmp_path / "dense")
    model, mask = structured_ticket()
    export_for_cpu(model, tmp_path / "export", mask=mask)
    args = ["speed", str(tmp_path / "export"), "--reference", str(tmp_path / "dense"), "--seq_len", str(SEQ)]
    args += ["--batch_sizes", "1", "2", "--threads", "1", "--repeats", "1", "--warmup", "0", "--write_card"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("| 1 | ") == 2 and "FLOP ideal" in printed
    saved = SpeedReport.from_dict(json.loads((tmp_path / "export" / SPEED_FIGURES_NAME).read_text()))
    assert [f.batch_size for f in saved.figures] == [1, 2] and saved.figures[0].flop_ideal > 1.5
    assert "## Speed" in (tmp_path / "export" / TICKET_CARD_NAME).read_text()
    assert not (tmp_path / "dense" / SPEED_FIGURES_NAME).exists()


def test_cli_speed_default_reference_is_the_unpruned_architecture(tmp_path, capsys):
    model, mask = structured_ticket()
    export_for_cpu(model, tmp_path / "export", mask=mask, quantize=None)
    args = ["speed", str(tmp_path / "export"), "--seq_len", str(SEQ), "--batch_sizes", "2", "--threads", "1"]
    report = cli_speed(args[1:] + ["--repeats", "1", "--warmup", "0", "--quantize", "int8"])
    assert report.label == "int8"
    (figure,) = report.figures
    exported = load_for_cpu(tmp_path / "export")
    ideal = encoder_matmul_flops(unpruned_reference(exported), SEQ) / encoder_matmul_flops(exported, SEQ)
    assert math.isclose(figure.flop_ideal, ideal) and ideal > 1.5
    assert figure.reference_latency_ms > 0
    printed = capsys.readouterr().out
    assert "| 1 | 2 | 16 |" in printed and "int8 model" in printed


WITHOUT_HF_LOTTERY = """
import json, sys
sys.modules["hf_lottery"] = None  # hf_lottery must not be importable here
import torch
from transformers import AutoModelForSequenceClassification

folder, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    print(json.dumps(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.tolist()))
"""


def test_export_loads_without_hf_lottery_in_fp32(tmp_path):
    model, mask = structured_ticket()
    export_for_cpu(model, tmp_path / "export", mask=mask)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    ids = inputs()["input_ids"]
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_HF_LOTTERY, str(tmp_path / "export"), json.dumps(ids.tolist())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.tensor(json.loads(proc.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(got, outputs(compact_by_mask(model, mask).eval())[0], atol=1e-6, rtol=1e-5)
