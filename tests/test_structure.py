"""The code's shape, checked: no import cycle in ``src/``, no source file over 450 lines, no
function over 80 lines (the limits the project's README names for a readable codebase); no study
imports another study's modules, and ``analysis/`` (what several studies share) imports nothing from
``experiments/`` (DESIGN.md, "Studies' protocol")."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _runtime_nodes(tree: ast.AST, annotations: bool = False):
    """Every node, except those under ``if TYPE_CHECKING:`` (imports for annotations only) unless
    ``annotations``."""
    for node in ast.iter_child_nodes(tree):
        if not annotations and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node, annotations)


def _imports(name: str, path: Path, modules: dict[str, Path], annotations: bool = False) -> set[str]:
    """Every muonlab module that ``name`` imports at run time, at module level or inside a function (and
    under ``if TYPE_CHECKING:`` too with ``annotations``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text()), annotations):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_modules():
    modules = _modules()
    # A package's __init__ re-exporting its own submodules is not a cycle of dependencies.
    graph = {name: {m for m in _imports(name, path, modules) if not (path.name == "__init__.py"
                                                                    and m.startswith(name + "."))}
             for name, path in modules.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_source_files_stay_short():
    long = {
        str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert not long, long


def test_functions_stay_short():
    long = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(SRC)}::{node.name}"] = n
    assert not long, long



STUDIES = "muonlab.experiments.studies."


def _study(module: str) -> str | None:
    """The study a module belongs to (``muonlab.experiments.studies.<study>[.…]``), None outside studies."""
    return module.removeprefix(STUDIES).split(".")[0] if module.startswith(STUDIES) else None


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that break the layering: a study importing another study's module, or ``muonlab.analysis``
    importing anything from ``muonlab.experiments``."""
    bad = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            mine, theirs = _study(source), _study(target)
            if mine and theirs and mine != theirs:
                bad.append(f"{source} -> {target} (one study imports another's module)")
            if source.startswith("muonlab.analysis") and target.startswith("muonlab.experiments"):
                bad.append(f"{source} -> {target} (analysis imports experiments)")
    return bad


def test_studies_stay_apart_and_analysis_stays_below_experiments():
    modules = _modules()
    graph = {name: _imports(name, path, modules, annotations=True) for name, path in modules.items()}
    assert not layering_violations(graph), "\n".join(layering_violations(graph))


def test_layering_rule_finds_what_it_forbids():
    graph = {
        "muonlab.experiments.studies.a.report": {"muonlab.experiments.studies.b.plan", "muonlab.analysis.runs",
                                                 "muonlab.experiments.studies.a.plan"},
        "muonlab.analysis.plots": {"muonlab.experiments.study", "muonlab.analysis.runs"},
        "muonlab.experiments.studies.b": {"muonlab.experiments.studies.b.plan", "muonlab.experiments.protocol"},
    }
    assert layering_violations(graph) == [
        "muonlab.analysis.plots -> muonlab.experiments.study (analysis imports experiments)",
        "muonlab.experiments.studies.a.report -> muonlab.experiments.studies.b.plan (one study imports another's "
        "module)",
    ]
    assert layering_violations({"muonlab.experiments.studies.a": {"muonlab.experiments.studies.a.plan"}}) == []
