"""A checkpoint's ``manifest.json``: the size and SHA-256 of every file in it, written last.

::

    {"format": 1, "files": {"model.safetensors": {"bytes": 21243904, "sha256": "9f2c..."},
                            "optimizer.pt": {...}, "trainer.json": {...}}}

The store writes the manifest after every other file of a checkpoint, so a checkpoint with a
manifest is one whose writer finished; :func:`manifest_problem` re-reads each file and says what
does not match (a truncated, replaced, bit-flipped or missing file). The digests are those of
``sha256sum``, so ``sha256sum`` can check a checkpoint too.

Hashing reads the files back from the page cache right after they were written; it runs in
threads beside the ``fsync`` calls that make the files durable (both release the GIL), so on a
disk whose sync takes longer than hashing the manifest costs almost nothing
(``benchmarks/checkpoint_save.py`` measures it).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..layout import MANIFEST_FILE

__all__ = ["MANIFEST_FORMAT", "file_digest", "manifest_problem", "write_manifest"]

MANIFEST_FORMAT = 1
_CHUNK = 8 << 20


def file_digest(path: Path) -> str:
    """The SHA-256 of the file at ``path``, as lowercase hex (what ``sha256sum`` prints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def write_manifest(folder: Path) -> None:
    """Sync every file under ``folder`` to disk and write ``folder/manifest.json`` with their sizes and digests.

    The manifest itself is written (and synced) last; a writer that dies before it leaves a folder
    that :func:`manifest_problem` reports as unfinished.
    """
    files = _files(folder)
    # One thread per sync and per digest: a sync waits on the disk, a digest on a core, so each digest
    # runs while the syncs wait rather than queueing behind them.
    with ThreadPoolExecutor(max_workers=max(2, min(32, 2 * len(files)))) as pool:
        digests = [pool.submit(file_digest, p) for p in files]
        syncs = [pool.submit(_fsync, p) for p in files]
        entries = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": d.result()}
                   for p, d in zip(files, digests)}
        for s in syncs:
            s.result()
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps({"format": MANIFEST_FORMAT, "files": entries}, indent=1) + "\n")
    _fsync(path)


def _read_manifest(folder: Path) -> dict[str, dict] | str:
    """The manifest's ``files`` table, or a phrase saying why it cannot be used."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        return f"it has no {MANIFEST_FILE}"
    except (OSError, ValueError) as err:
        return f"its {MANIFEST_FILE} is unreadable ({err})"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict) or not files:
        return f"its {MANIFEST_FILE} is not a muonlab manifest of format {MANIFEST_FORMAT}"
    return files


def manifest_problem(folder: Path) -> str | None:
    """None when every file ``folder``'s manifest lists is present with its size and digest, else a
    phrase naming the first file that is missing, of another size, or of another content."""
    files = _read_manifest(folder)
    if isinstance(files, str):
        return files
    for name, entry in sorted(files.items()):
        path = folder / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            return f"its {MANIFEST_FILE} names {name!r}, outside the checkpoint"
        if not path.is_file():
            return f"{name} is missing"
        size, expected = path.stat().st_size, entry.get("bytes") if isinstance(entry, dict) else None
        if size != expected:
            return f"{name} has {size:,} bytes where the manifest says {expected}"
        if file_digest(path) != entry.get("sha256"):
            return f"{name} does not match its checksum (its content changed after it was saved)"
    return None
