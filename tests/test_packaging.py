"""Packaging: the license file, core vs extras (the core imports and runs without the extras), the plot's manners."""

from __future__ import annotations

import ast

import pytest
import tomllib
from conftest import REPO_ROOT

from hf_lottery.ticket.history import plot_history, plot_title

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
EXTRAS_ONLY = ("peft", "datasets", "evaluate", "scikit-learn", "scipy", "matplotlib", "optuna")


def test_license_file_and_metadata():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in (REPO_ROOT / "LICENSE").read_text(encoding="utf-8")[:200]
    assert len(project["classifiers"]) > 2 and "Typing :: Typed" in project["classifiers"]
    urls = project["urls"]
    assert {"Homepage", "Documentation", "Repository", "Issues", "Changelog"} <= set(urls)
    assert len({u.split("/")[4] for u in urls.values()}) == 1  # one repository behind every link
    assert all(u.startswith(urls["Repository"]) for u in urls.values())
    for url, path in ((urls["Documentation"], "docs"), (urls["Changelog"], "CHANGELOG.md")):
        assert (REPO_ROOT / path).exists() and url.endswith(path)  # the links name files the repository has


def test_core_dependencies_leave_the_extras_out():
    core = " ".join(PYPROJECT["project"]["dependencies"])
    assert not [name for name in EXTRAS_ONLY if name in core]
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"peft", "plot", "glue", "hpo", "demo", "dev"} <= set(extras)
    assert not [req for req in extras["demo"] if "minilm" in req]  # its package pulls sentence-transformers


# Modules outside the core: the CLI (glue_tasks: datasets, evaluate, scikit-learn, scipy) and the test helpers.
_NOT_CORE = ("cli.py", "testing_utils.py")
_EXTRA_MODULES = ("peft", "datasets", "evaluate", "sklearn", "scipy", "matplotlib", "optuna", "glue_tasks")


def test_the_core_imports_no_extra_at_module_level():
    offenders = []
    for path in sorted((REPO_ROOT / "hf_lottery").rglob("*.py")):
        if path.name in _NOT_CORE:
            continue
        for node in ast.parse(
            path.read_text(encoding="utf-8")
        ).body:  # module level only: optional imports sit in functions
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO_ROOT)}: {n}" for n in names if n.split(".")[0] in _EXTRA_MODULES]
    assert not offenders, offenders


def test_plot_leaves_the_matplotlib_backend_alone_and_names_task_and_model(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("pdf")
    records = [{"sparsity": s, "metrics": {"eval_accuracy": a}} for s, a in ((0.0, 0.8), (0.5, 0.78))]
    assert plot_history(tmp_path / "plot.png", records, "accuracy", plot_title("sst2", "/home/me/models/minilm"))
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert matplotlib.get_backend().lower() == "pdf"
    assert plot_title("sst2", "/home/me/models/minilm") == "Lottery ticket: sst2 · minilm"
    assert plot_title() == "Lottery ticket: metric vs sparsity"
