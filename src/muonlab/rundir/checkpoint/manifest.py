"""A checkpoint's ``manifest.json``: the size and checksum of every file in it, written last.

::

    {"format": 2, "files": {"model.safetensors": {"bytes": 21243904, "xxh3_128": "9f2c..."},
                            "optimizer.pt": {...}, "trainer.json": {...}}}

The store writes the manifest after every other file of a checkpoint, so a checkpoint with a
manifest is one whose writer finished; :func:`manifest_problem` re-reads each file and says what
does not match (a truncated, replaced, bit-flipped or missing file).

The checksum is XXH3-128 (the ``xxhash`` package), a non-cryptographic hash that reads memory at
about 9 GB/s on one core where SHA-256 reads 1 GB/s and ``zlib.crc32`` 1.7 GB/s: it is there to
catch damage (a flipped bit, a cut or overwritten file), not tampering, and at that speed it adds a
few per cent to a save (``benchmarks/checkpoint_save.py`` measures it). Files are hashed side by
side in threads, through a memory map of the page cache they were just written to (nothing is
copied). Manifests of format 1 (SHA-256, written before) are still verified; a manifest of a newer
format is named as such.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import xxhash

from ..layout import MANIFEST_FILE

__all__ = ["DIGESTS", "MANIFEST_FORMAT", "file_digest", "manifest_problem", "write_manifest"]

MANIFEST_FORMAT = 2
DIGESTS: dict[int, tuple[str, Callable[[], object]]] = {1: ("sha256", hashlib.sha256), 2: ("xxh3_128", xxhash.xxh3_128)}
"""Each manifest format's checksum: the key its entries store it under, and the hash object's constructor."""


def file_digest(path: Path, manifest_format: int = MANIFEST_FORMAT) -> str:
    """The checksum of the file at ``path`` that a manifest of ``manifest_format`` stores, as lowercase hex."""
    digest = DIGESTS[manifest_format][1]()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size:  # an empty file cannot be mapped; its digest is that of no bytes
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
                digest.update(view)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def write_manifest(folder: Path) -> None:
    """Write ``folder/manifest.json`` with the size and checksum of every other file under ``folder``, and
    sync them all to disk; returns once everything is synced.

    The manifest is written last, after every digest; a writer that dies before it leaves a folder
    that :func:`manifest_problem` reports as unfinished. (The store publishes the folder only after
    this returns, so the order in which the syncs reach the disk does not matter.)
    """
    files = _files(folder)
    key = DIGESTS[MANIFEST_FORMAT][0]
    # One thread per digest and per sync (both release the GIL): the files are hashed side by side on
    # free cores while their syncs wait on the disk, and the manifest's sync joins those still waiting
    # rather than queueing behind them (on a busy disk a sync takes far longer than the hashing).
    with ThreadPoolExecutor(max_workers=max(2, min(32, 2 * len(files) + 1))) as pool:
        syncs = [pool.submit(_fsync, p) for p in files]
        digests = [pool.submit(file_digest, p) for p in files]
        entries = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, key: d.result()}
                   for p, d in zip(files, digests)}
        path = folder / MANIFEST_FILE
        path.write_text(json.dumps({"format": MANIFEST_FORMAT, "files": entries}, indent=1) + "\n")
        syncs.append(pool.submit(_fsync, path))
        for s in syncs:
            s.result()


def _read_manifest(folder: Path) -> tuple[int, dict[str, dict]] | str:
    """The manifest's format and ``files`` table, or a phrase saying why it cannot be used."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        return f"it has no {MANIFEST_FILE}"
    except (OSError, ValueError) as err:
        return f"its {MANIFEST_FILE} is unreadable ({err})"
    if not isinstance(manifest, dict):
        return f"its {MANIFEST_FILE} is not a muonlab manifest"
    files, version = manifest.get("files"), manifest.get("format")
    if isinstance(version, int) and version > MANIFEST_FORMAT:
        return (f"its {MANIFEST_FILE} is of format {version}, newer than this muonlab reads "
                f"({', '.join(map(str, DIGESTS))}); upgrade muonlab to load it")
    if version not in DIGESTS or not isinstance(files, dict) or not files:
        return f"its {MANIFEST_FILE} is not a muonlab manifest of format {' or '.join(map(str, DIGESTS))}"
    return version, files


def manifest_problem(folder: Path) -> str | None:
    """None when every file ``folder``'s manifest lists is present with its size and checksum, else a
    phrase naming the first file that is missing, of another size, or of another content."""
    manifest = _read_manifest(folder)
    if isinstance(manifest, str):
        return manifest
    version, files = manifest
    key = DIGESTS[version][0]
    for name, entry in sorted(files.items()):
        path = folder / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            return f"its {MANIFEST_FILE} names {name!r}, outside the checkpoint"
        if not path.is_file():
            return f"{name} is missing"
        size, expected = path.stat().st_size, entry.get("bytes") if isinstance(entry, dict) else None
        if size != expected:
            return f"{name} has {size:,} bytes where the manifest says {expected}"
        if file_digest(path, version) != entry.get(key):
            return f"{name} does not match its checksum (its content changed after it was saved)"
    return None
