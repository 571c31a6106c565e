"""The house's import rules, read from the source: imports run one way, no circles, no import hidden in a function.

Every `import` of the package is parsed (module level, inside functions, under `TYPE_CHECKING`) and resolved to the
module it names. The rules are those of CONTRIBUTING.md ("The house"):

- each module sits in a wing, and a wing imports only the wings below it (its own included);
- no circle between modules, counting the package `__init__` each import runs;
- no import of an hf_lottery module inside a function or class body (the way circles hide);
- storage (`ticket/*` other than `mask.py`) never builds a `TicketMask`: it does not import `ticket/mask.py`;
- `training/arguments.py` imports only choices, defaults and the schedule; `callback` never imports `trainer`;
- `glue_tasks` never imports hf_lottery, and only `hf_lottery.cli` imports `glue_tasks`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "hf_lottery"

# Lower wings first: a module may import its own wing and the wings listed before it.
WINGS = [
    ("constants", "types"),
    ("utils",),
    ("ticket",),
    ("selector",),
    ("scoring", "structured"),
    ("pruning", "deploy"),
    ("integrations",),
    ("training",),
    ("testing_utils", "cli"),
    ("__init__",),
]
RANK = {wing: rank for rank, names in enumerate(WINGS) for wing in names}
# Wings of the same rank stay apart (structured never needs a scoring method, nor scoring a structure).
SAME_RANK_ALLOWED: set[tuple[str, str]] = set()

ARGUMENTS_MAY_IMPORT = {"hf_lottery.types", "hf_lottery.constants", "hf_lottery.training.schedule"}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _modules(package: str) -> dict[str, Path]:
    return {_module_name(p, ROOT): p for p in sorted((ROOT / package).rglob("*.py"))}


class _Imports(ast.NodeVisitor):
    """Collects `(target module, line, nested)` for every import of a file."""

    def __init__(self, module: str, is_package: bool, known: set[str]):
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.found: list[tuple[str, int, bool]] = []
        self.depth = 0

    def _scoped(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _scoped

    def _add(self, name: str, line: int) -> None:
        self.found.append((name, line, self.depth > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        self._add(target, node.lineno)
        for alias in node.names:  # `from . import hydra`: the submodule itself
            if f"{target}.{alias.name}" in self.known:
                self._add(f"{target}.{alias.name}", node.lineno)


def _graph(package: str) -> dict[str, list[tuple[str, int, bool]]]:
    modules = _modules(package)
    known = set(modules) | set(_modules("glue_tasks"))
    graph = {}
    for name, path in modules.items():
        visitor = _Imports(name, _is_package(path), known)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        graph[name] = visitor.found
    return graph


GRAPH = _graph(PACKAGE)


def _internal(graph=GRAPH):
    """Edges between hf_lottery modules, `(source, target, line, nested)`."""
    for source, imports in graph.items():
        for target, line, nested in imports:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                yield source, target, line, nested


def _wing(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def test_the_graph_is_read():
    # The parser sees the package: a rule that checks nothing would pass vacuously.
    assert len(GRAPH) > 40
    assert ("hf_lottery.training.trainer", "hf_lottery.training.rounds") in {(s, t) for s, t, *_ in _internal()}


def test_no_import_of_the_package_inside_a_function():
    nested = [f"{s} line {line} imports {t}" for s, t, line, inner in _internal() if inner]
    assert not nested, "Imports of hf_lottery modules inside functions (they hide circles):\n" + "\n".join(nested)


def test_wings_import_only_the_wings_below():
    wrong = []
    for source, target, line, _ in _internal():
        a, b = _wing(source), _wing(target)
        if a == b or target == PACKAGE and a == "__init__":
            continue
        if a not in RANK or b not in RANK:
            wrong.append(f"{source} line {line}: {target} is in no wing of the map (tests/test_layering.py WINGS)")
        elif RANK[b] > RANK[a] or (RANK[b] == RANK[a] and (a, b) not in SAME_RANK_ALLOWED):
            wrong.append(f"{source} line {line} imports {target}: {a} may not import {b}")
    assert not wrong, "\n".join(wrong)


def test_no_circles():
    edges: dict[str, set[str]] = {name: set() for name in GRAPH}
    for source, target, _, _ in _internal():
        if target in edges and target != source:
            edges[source].add(target)
    for name in GRAPH:  # importing a.b.c runs the __init__ of a.b first (the root package is being imported)
        parent = name.rpartition(".")[0]
        while parent and parent != PACKAGE:
            for source in GRAPH:
                if name in edges[source] and source != parent and not source.startswith(parent + "."):
                    edges[source].add(parent)
            parent = parent.rpartition(".")[0]
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (circle := visit(node)):
            pytest.fail("Import circle: " + " -> ".join(circle))


def test_storage_never_builds_a_ticket_mask():
    wrong = [
        f"{s} line {line}"
        for s, t, line, _ in _internal()
        if s.startswith("hf_lottery.ticket.") and s != "hf_lottery.ticket.mask" and t == "hf_lottery.ticket.mask"
    ]
    assert not wrong, "ticket storage modules import ticket/mask.py: " + ", ".join(wrong)


def test_arguments_import_choices_and_defaults_only():
    imported = {t for s, t, _, _ in _internal() if s == "hf_lottery.training.arguments"}
    assert imported <= ARGUMENTS_MAY_IMPORT, f"training/arguments.py imports {sorted(imported - ARGUMENTS_MAY_IMPORT)}"


def test_the_callback_never_imports_the_trainer():
    assert "hf_lottery.training.trainer" not in {
        t for s, t, _, _ in _internal() if s == "hf_lottery.training.callback"
    }


def test_glue_tasks_stand_apart():
    glue = _graph("glue_tasks")
    into_package = [f"{s} imports {t}" for s, imports in glue.items() for t, _, _ in imports if t.startswith(PACKAGE)]
    assert not into_package, into_package
    users = {s for s, imports in GRAPH.items() for t, _, _ in imports if t.split(".")[0] == "glue_tasks"}
    assert users <= {"hf_lottery.cli"}, f"only the CLI imports glue_tasks, not {sorted(users - {'hf_lottery.cli'})}"


@pytest.mark.parametrize(
    "source, rule",
    [
        ("from ..training.trainer import LotteryTrainer\n", test_wings_import_only_the_wings_below),
        ("def f():\n    from ..selector import select_mask\n", test_no_import_of_the_package_inside_a_function),
    ],
)
def test_the_rules_catch_a_violation(source, rule, monkeypatch):
    # A rule that cannot fail proves nothing: plant one violation in ticket/config.py and see it caught.
    path = ROOT / PACKAGE / "ticket" / "config.py"
    visitor = _Imports("hf_lottery.ticket.config", False, set(GRAPH))
    visitor.visit(ast.parse(path.read_text(encoding="utf-8") + "\n" + source))
    monkeypatch.setitem(GRAPH, "hf_lottery.ticket.config", visitor.found)
    with pytest.raises(AssertionError):
        rule()
