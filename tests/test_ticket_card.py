"""The ticket's model card: template location, rendering, YAML metadata, and the template inside a wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from hf_lottery import TicketConfig, TicketMask, save_sparse_model
from hf_lottery.constants import SPARSITY_PLOT_NAME, TICKET_CARD_NAME, TICKET_CARD_TEMPLATE
from hf_lottery.ticket.card import render_ticket_card, template_text

REPO_ROOT = Path(__file__).resolve().parents[1]
CANONICAL = REPO_ROOT / "model_cards" / TICKET_CARD_TEMPLATE
PACKAGED = REPO_ROOT / "hf_lottery" / "templates" / TICKET_CARD_TEMPLATE

HISTORY = [
    {"round": r, "sparsity": s, "target_sparsity": s, "metrics": {"eval_loss": 0.3, "eval_matthews": m}, "steps": 9}
    for r, (s, m) in enumerate([(0.0, 0.58), (0.2, 0.57), (0.36, 0.55)])
]


def make_ticket(**config_overrides) -> TicketMask:
    g = torch.Generator().manual_seed(0)
    masks = {
        "bert.encoder.layer.0.output.dense.weight": torch.rand(32, 48, generator=g) > 0.36,
        "bert.pooler.dense.weight": torch.rand(32, 32, generator=g) > 0.36,
    }
    fields = dict(
        base_model_name_or_path="org/tiny-bert",
        architecture="BertForSequenceClassification",
        model_kwargs={"num_labels": 2},
        task="cola",
        dataset="nyu-mll/glue",
        metric="eval_matthews",
        pruning_method="magnitude",
        lottery_args={"target_sparsity": 0.36, "rewind": "pretrained"},
        history=HISTORY,
    )
    fields.update(config_overrides)
    return TicketMask(masks, metadata=TicketConfig(**fields).to_dict())


def test_packaged_template_is_the_canonical_one():
    assert CANONICAL.read_bytes() == PACKAGED.read_bytes(), (
        f"{PACKAGED} must be a byte-identical copy of {CANONICAL}: cp model_cards/{TICKET_CARD_TEMPLATE} "
        "hf_lottery/templates/"
    )
    assert not PACKAGED.is_symlink()
    assert template_text() == CANONICAL.read_text(encoding="utf-8")


def test_saved_card_metadata(tmp_path):
    folder = make_ticket().save_pretrained(tmp_path / "cola-ticket")
    card = ModelCard.load(folder / TICKET_CARD_NAME)
    data = card.data
    assert data.library_name == "hf_lottery"
    assert data.base_model == "org/tiny-bert"
    assert {"lottery-ticket", "pruning", "sparsity"} <= set(data.tags)
    assert data.datasets == ["nyu-mll/glue"]
    meta = metadata_load(folder / TICKET_CARD_NAME)
    model_name, results = model_index_to_eval_results(meta["model-index"])
    assert [r.metric_value for r in results] == [0.58, 0.57, 0.55]  # the main metric at each round
    assert {r.metric_type for r in results} == {"matthews"} and {r.task_type for r in results} == {
        "text-classification"
    }
    assert {r.dataset_type for r in results} == {"nyu-mll/glue"} and {r.dataset_config for r in results} == {"cola"}
    assert "36.00% sparsity (round 2)" in results[-1].metric_name


def test_card_body(tmp_path):
    ticket = make_ticket()
    folder = ticket.save_pretrained(tmp_path / "t")
    text = (folder / TICKET_CARD_NAME).read_text(encoding="utf-8")
    assert (folder / SPARSITY_PLOT_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"]({SPARSITY_PLOT_NAME})" in text
    assert "| 2 | 36.00% | 36.00% | 0.5500 |" in text  # round table
    for name, row in ticket.report().items():
        if name != "__total__":
            assert f"| `{name}` |" in text and f"{100 * row['sparsity']:.2f}%" in text
    assert "ticket.load_model(AutoModelForSequenceClassification, num_labels=2)" in text
    assert "https://huggingface.co/org/tiny-bert" in text
    assert "| `rewind` | `pretrained` |" in text


def test_card_for_pushed_repo_and_minimal_ticket():
    card = render_ticket_card(make_ticket(), repo_id="user/cola-36")
    assert card.data.model_name == "cola-36" and 'from_pretrained("user/cola-36")' in card.content
    bare = TicketMask({"w": torch.ones(4, 4, dtype=torch.bool)})
    card = render_ticket_card(bare)
    assert card.data.library_name == "hf_lottery" and card.data.eval_results is None
    assert "No round history" in card.content and "AutoModel" in card.content


def test_local_base_path_is_not_a_hub_base_model(tmp_path):
    card = render_ticket_card(make_ticket(base_model_name_or_path=str(tmp_path)))
    assert card.data.base_model is None and str(tmp_path) in card.content


def test_sparse_folder_card_shows_vanilla_loading(tmp_path):
    from hf_lottery import prune
    from hf_lottery.testing_utils import tiny_model

    model = tiny_model()
    mask = prune(model, 0.5)
    folder = save_sparse_model(
        model, mask.with_metadata(TicketConfig.from_model(model, mask).to_dict()), tmp_path / "s"
    )
    card = ModelCard.load(folder / TICKET_CARD_NAME)
    assert card.data.pipeline_tag == "text-classification"
    assert "AutoModelForSequenceClassification.from_pretrained(" in card.content


@pytest.mark.slow
def test_template_is_found_from_a_wheel(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO_ROOT / "pyproject.toml", src)
    shutil.copytree(REPO_ROOT / "hf_lottery", src / "hf_lottery", ignore=shutil.ignore_patterns("__pycache__"))
    readme = REPO_ROOT / "README.md"
    (src / "README.md").write_text(readme.read_text() if readme.exists() else "hf_lottery\n")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        assert f"hf_lottery/templates/{TICKET_CARD_TEMPLATE}" in zf.namelist()
        zf.extractall(site)
    script = (
        "import sys, torch, hf_lottery\n"
        f"assert hf_lottery.__file__.startswith({str(site)!r}), hf_lottery.__file__\n"
        "from hf_lottery.ticket.card import render_ticket_card\n"
        "card = render_ticket_card(hf_lottery.TicketMask({'w': torch.ones(3, 3, dtype=torch.bool)}))\n"
        "assert card.data.library_name == 'hf_lottery'\n"
        "print('rendered', len(str(card)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rendered" in run.stdout


def test_the_card_says_what_the_ticket_cost():
    # HISTORY predates `total_steps`: the card sums `steps` (9 per round); a recorded total is shown as recorded.
    text = str(render_ticket_card(make_ticket()))
    assert "took 27 optimizer steps" in text
    assert "| 2 | 36.00% | 36.00% | 0.5500 | – | 9 | 27 |" in text
    early = [dict(r, total_steps=t, steps=s) for r, s, t in zip(HISTORY, [9, 3, 9], [9, 12, 21])]
    text = str(render_ticket_card(make_ticket(history=early)))
    assert "took 21 optimizer steps" in text and "| 1 | 20.00% | 20.00% | 0.5700 | – | 3 | 12 |" in text
