"""Give CPU training a fast memory allocator without the user asking.

With glibc's default settings every training step hands its large activation buffers back to
the kernel and faults fresh zeroed pages in on the next step; on the 2-core development CPU a
plain PyTorch loop ran 1.25× (4-layer d=256) to 1.8× (2-layer d=128) faster with mimalloc
preloaded, and similarly with jemalloc. The allocator must be chosen before the process starts,
so ``ensure_fast_allocator`` re-executes the current command once with:

1. jemalloc preloaded (``LD_PRELOAD``) when ``libjemalloc.so.2`` is installed (Debian/Ubuntu
   package ``libjemalloc2``), with background purging disabled; else
2. mimalloc preloaded from the ``cmeel-mimalloc`` wheel that muonlab depends on (Linux x86-64); else
3. glibc tunables that keep freed memory in the process (no trimming, no per-buffer ``mmap``).

Set ``MUONLAB_ALLOCATOR=default`` to keep the process as it is. Nothing happens off Linux.
"""

from __future__ import annotations

import glob
import os
import sys
import sysconfig

__all__ = ["allocator_environment", "ensure_fast_allocator", "find_jemalloc", "find_mimalloc"]

_MARKER = "MUONLAB_ALLOCATOR"
_JEMALLOC_PATTERNS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so*",
)
# Keep every freed block in the heap: 32 MiB is glibc's largest mmap threshold; no trimming.
GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=18446744073709551615"
JEMALLOC_CONF = "background_thread:false,dirty_decay_ms:-1,muzzy_decay_ms:-1"


def find_jemalloc() -> str | None:
    """Path of an installed ``libjemalloc.so``, or None."""
    for pattern in _JEMALLOC_PATTERNS:
        matches = sorted(glob.glob(pattern))
        if matches:
            return matches[0]
    return None


def find_mimalloc() -> str | None:
    """Path of the ``libmimalloc.so`` shipped by the ``cmeel-mimalloc`` wheel, or None."""
    for key in ("platlib", "purelib"):
        matches = sorted(glob.glob(os.path.join(sysconfig.get_paths()[key], "cmeel.prefix", "lib", "libmimalloc.so*")))
        if matches:
            return matches[0]
    return None


def allocator_environment(base: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """``(name, env)``: the best allocator available here and the environment that selects it."""
    env = dict(os.environ if base is None else base)
    jemalloc, mimalloc = find_jemalloc(), find_mimalloc()
    if jemalloc:
        env["LD_PRELOAD"] = " ".join(filter(None, [jemalloc, env.get("LD_PRELOAD", "")]))
        env["MALLOC_CONF"] = env.get("MALLOC_CONF") or JEMALLOC_CONF
        name = "jemalloc"
    elif mimalloc:
        env["LD_PRELOAD"] = " ".join(filter(None, [mimalloc, env.get("LD_PRELOAD", "")]))
        name = "mimalloc"
    else:
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES", ""), GLIBC_TUNABLES]))
        name = "glibc-tuned"
    env[_MARKER] = name
    return name, env


def ensure_fast_allocator(argv: list[str]) -> None:
    """Re-execute ``argv`` under the fastest allocator available, once; return if already done."""
    if not sys.platform.startswith("linux") or os.environ.get(_MARKER):
        return
    _, env = allocator_environment()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv], env)
    except OSError:  # cannot re-exec (unusual sandbox): keep running with the default allocator
        return
