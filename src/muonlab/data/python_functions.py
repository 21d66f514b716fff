"""The built-in fine-tuning set ``python-functions``: standard-library functions, docstring → body.

It is cut from the sources the ``python`` corpus reads (:func:`muonlab.data.load_corpus`, in its
order). Every function or method (``def`` or ``async def``, nested ones included) with a docstring
and at least one statement after it gives one prompt/response pair:

- prompt: the ``def`` line(s) — the signature, without decorators — and the docstring, as source;
- response: the rest of the body as source (comments inside it included), leading blank lines dropped.

Both are dedented by the ``def``'s own indentation (a line indented less, e.g. inside a multi-line
string, is kept as it is). Left out: files that do not parse, a body whose first statement after the
docstring shares the docstring's last line, and bodies that are only ``pass``, ``...`` or ``raise
NotImplementedError``. Parsing takes seconds, so the pairs are cached as JSONL under
``<cache>/sft/``, named by the corpus fingerprint and :data:`EXTRACT_VERSION`.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from .atomic import atomic_write_text
from .corpora import load_corpus

__all__ = ["EXTRACT_VERSION", "function_pairs", "python_function_pairs"]

EXTRACT_VERSION = 1
"""Bumped whenever the way pairs are cut from the sources changes, so old caches are not reused."""


def _is_stub(statements: list[ast.stmt]) -> bool:
    """Whether a body (after its docstring) is only ``pass``, ``...`` or ``raise NotImplementedError[(...)]``."""
    if len(statements) != 1:
        return False
    (statement,) = statements
    if isinstance(statement, ast.Pass):
        return True
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
        return statement.value.value is Ellipsis
    if isinstance(statement, ast.Raise) and statement.exc is not None:
        exc = statement.exc.func if isinstance(statement.exc, ast.Call) else statement.exc
        return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
    return False


def _dedent(lines: list[str], width: int) -> str:
    return "\n".join(line[width:] if not line[:width].strip() else line for line in lines)


def function_pairs(source: str) -> list[tuple[str, str]]:
    """The (prompt, response) pairs of one source file, in source order (see the module docstring)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.split("\n")
    pairs = []
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for node in sorted(functions, key=lambda n: n.lineno):
        if ast.get_docstring(node, clean=False) is None or len(node.body) < 2:
            continue
        docstring, rest = node.body[0], node.body[1:]
        if rest[0].lineno <= docstring.end_lineno or _is_stub(rest):
            continue
        body = lines[docstring.end_lineno:node.end_lineno]
        while body and not body[0].strip():
            body = body[1:]
        width = node.col_offset
        pairs.append((_dedent(lines[node.lineno - 1:docstring.end_lineno], width), _dedent(body, width)))
    return pairs


def python_function_pairs(cache_dir: Path) -> list[tuple[str, str]]:
    """Every (prompt, response) pair of the ``python`` corpus, file by file; cached under ``cache_dir/sft``."""
    corpus = load_corpus("python")
    path = Path(cache_dir) / "sft" / f"python-functions-v{EXTRACT_VERSION}-{corpus.fingerprint[:16]}.jsonl"
    if path.is_file():
        try:
            return [tuple(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()]
        except (json.JSONDecodeError, ValueError):
            pass  # a damaged cache file is rebuilt and replaced below
    pairs = [pair for document in corpus.documents for pair in function_pairs(document)]
    atomic_write_text(path, "".join(json.dumps(pair) + "\n" for pair in pairs))
    return pairs
