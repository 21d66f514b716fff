"""The studies ``muonlab experiment`` knows: every module or package of ``muonlab.experiments.studies`` with a
``STUDY`` (a package defines it in its ``__init__``).

Adding a study is adding one package there (its plan, report and plots inside it); nothing else lists them.
A module whose name starts with ``_`` is not a study.
"""

from __future__ import annotations

import importlib
import pkgutil

from . import studies
from .study import Study

__all__ = ["all_studies", "get_study"]


def all_studies() -> dict[str, Study]:
    """Every study by name, sorted by name."""
    found: dict[str, Study] = {}
    for info in pkgutil.iter_modules(studies.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{studies.__name__}.{info.name}")
        study = getattr(module, "STUDY", None)
        if not isinstance(study, Study):
            raise TypeError(f"study module {module.__name__} must define STUDY = Study(...)")
        if study.name in found:
            raise ValueError(f"two study modules define the study {study.name!r}")
        found[study.name] = study
    return dict(sorted(found.items()))


def get_study(name: str) -> Study:
    """The study called ``name``; ``ValueError`` listing the known ones otherwise."""
    known = all_studies()
    if name not in known:
        raise ValueError(f"unknown study {name!r}; studies: {', '.join(known) or '(none)'} "
                         "(muonlab experiment --list describes them)")
    return known[name]
