"""muonlab: the Muon optimizer (Moonlight's scalable variant) and a workbench for its claims.

``muonlab.optim`` is the optimizer (torch only); ``muonlab.load_run(path)`` gives a trained run's model
and tokenizer (:mod:`muonlab.loading`). Importing ``muonlab`` itself imports nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .loading import LoadedRun, load_run

__version__ = "0.1.0"
__all__ = ["LoadedRun", "__version__", "load_run"]


def __getattr__(name: str):
    if name in ("LoadedRun", "load_run"):  # imported on first use: torch and the models load only then
        from . import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'muonlab' has no attribute {name!r}")
