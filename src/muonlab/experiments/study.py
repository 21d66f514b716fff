"""What a study is: parameters from a preset, a plan of named runs, and an analysis of their run folders.

A study module under ``muonlab/experiments/studies/`` defines one ``STUDY = Study(...)``:

- ``presets``: ``{"cpu": {...}, "gpu": {...}}``, each a flat dict of the study's parameters (every
  preset has the same keys; the values' types are the parameters' types);
- ``plan(params, done) -> list[PlannedRun]``: the named runs, each a complete ``TrainConfig`` (the
  machinery sets ``run_dir`` to ``<out>/<name>`` and turns the per-run progress bar off). ``done``
  maps the names of the runs finished so far to their folders (``muonlab.analysis.runs.Run``); a
  study whose plan is fixed ignores it. A *staged* study plans runs that need others first
  (``PlannedRun.needs``): their configs may depend on those runs' results (the fine-tuning of a
  pretrained run, the learning rate that won a sweep). Either the plan lists every run from the
  start (so ``--dry-run`` can cost it: until its needs are done, a run's config is provisional —
  the right model and token budget, placeholder hyperparameters — and its *name* must not depend
  on ``done``: name a tuned run ``...-best-s0``, not after its learning rate), or it *grows*: runs
  appear once the results that decide them are in, and ``projected_plan`` says how it is expected
  to end. The machinery runs a stage, then plans again with the finished runs, until every run is done;
- ``analyse(finished: Finished) -> Analysis``: reads the run folders (``finished.runs``, loaded by
  ``muonlab.analysis.runs``), writes its PNG plots into ``finished.out`` and returns the numbers
  for ``results.json`` and the sections of ``report.md``;
- ``times_steps`` (default False): True for a study whose runs measure step times (``pareto``), so
  they train one at a time unless ``--workers`` says otherwise (a neighbour would slow each step).
- ``projected_plan(params) -> list[PlannedRun]`` (optional): for a study whose plan *grows* as results
  come in (a bracketed learning-rate sweep adds runs once it knows where its optimum lies), the plan as
  it is expected to end, which ``--dry-run`` costs. A growing plan never drops or renames a run it has
  listed; runs it adds list the runs whose results decided them in ``needs``.

Parameters are overridden from a TOML file and then from ``--set key=value`` (``parameters``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis.runs import Run
from ..train.config import ConfigError, TrainConfig

__all__ = ["Analysis", "Finished", "PlannedRun", "Study", "require_corpus"]


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study: its folder name under the study's output folder, its config, and the
    runs (by name, planned before it) that must finish before it starts.

    A ``config.init_from`` that is the name of a run planned before this one means that run's final
    weights: the machinery points it at that run's folder and adds it to ``needs``.
    """

    name: str
    config: TrainConfig
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Finished:
    """What ``analyse`` gets: the parameters, the planned runs loaded from their folders (by name,
    in plan order) and the output folder for plots."""

    params: Mapping[str, Any]
    runs: Mapping[str, Run]
    out: Path


@dataclass
class Analysis:
    """What ``analyse`` returns.

    ``results``: JSON-ready numbers computed from the run folders only (``results.json``; an
    interrupted and resumed study gives the same). ``sections``: ``(heading, markdown)`` pairs of
    ``report.md`` in order. ``figures``: ``(caption, path)`` of the PNG files written into ``out``
    (a None path, from a plot with nothing to show, is left out). ``summary``: a line or two printed
    when the study ends (the headline).
    """

    results: dict[str, Any]
    sections: list[tuple[str, str]] = field(default_factory=list)
    figures: list[tuple[str, Path | None]] = field(default_factory=list)
    summary: str = ""


@dataclass(frozen=True)
class Study:
    """A reproducible experiment: see the module docstring for what each field is."""

    name: str
    title: str
    claim: str
    """The paper's claim the study checks, with its number and source (one sentence)."""
    presets: Mapping[str, Mapping[str, Any]]
    plan: Callable[[Mapping[str, Any], Mapping[str, Run]], list[PlannedRun]]
    analyse: Callable[[Finished], Analysis]
    times_steps: bool = False
    projected_plan: Callable[[Mapping[str, Any]], list[PlannedRun]] | None = None

    def __post_init__(self) -> None:
        if "cpu" not in self.presets:
            raise ValueError(f"study {self.name!r} has no 'cpu' preset; presets: {sorted(self.presets)}")
        keys = set(self.presets["cpu"])
        for name, values in self.presets.items():
            if set(values) != keys:
                raise ValueError(f"study {self.name!r}: preset {name!r} has keys {sorted(values)}, "
                                 f"but every preset must have the 'cpu' preset's keys {sorted(keys)}")

    def planned(self, params: Mapping[str, Any], out: Path, train_overrides: Mapping[str, Any],
                done: Mapping[str, Run] | None = None) -> list[PlannedRun]:
        """The plan, given the runs ``done`` so far, with each run in ``<out>/<name>``, its progress bar
        off and ``train_overrides`` applied."""
        return self._placed(self.plan(params, done or {}), out, train_overrides)

    def projected(self, params: Mapping[str, Any], out: Path, train_overrides: Mapping[str, Any]) -> list[PlannedRun]:
        """The plan as it is expected to end (``projected_plan``; the plan from scratch for a study whose plan
        does not grow), placed like ``planned``."""
        runs = self.projected_plan(params) if self.projected_plan else self.plan(params, {})
        return self._placed(runs, out, train_overrides)

    def _placed(self, runs: list[PlannedRun], out: Path, train_overrides: Mapping[str, Any]) -> list[PlannedRun]:
        names = [r.name for r in runs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"study {self.name!r} planned several runs named {repeated}; run names must be unique")
        placed = []
        for position, run in enumerate(runs):
            unknown = [n for n in run.needs if n not in names[:position]]
            if unknown:
                raise ValueError(f"study {self.name!r}: run {run.name!r} needs {unknown}, which are not planned "
                                 "before it; a run can only need runs listed earlier in the plan")
            fields, needs = {**train_overrides, "run_dir": str(out / run.name), "progress": False}, run.needs
            if run.config.init_from in names[:position]:
                fields["init_from"] = str(out / run.config.init_from)
                needs = tuple(dict.fromkeys((*needs, run.config.init_from)))
            placed.append(PlannedRun(run.name, run.config.replace(**fields), needs))
        return placed


def require_corpus(params: Mapping[str, Any], study: str) -> None:
    """Stop with one sentence when a preset leaves ``corpus`` empty: its token budget needs a corpus larger than
    the built-in ones, which the user names."""
    if not params.get("corpus"):
        raise ConfigError(f"study {study!r}: this preset trains more tokens than the built-in corpora hold; name "
                          "yours with --set corpus=<a .txt/.jsonl/.parquet file, a folder, a glob or hf:NAME>")


def parse_value(key: str, text: str, default: Any) -> Any:
    """``text`` (from ``--set``) as the type of the parameter's ``default``; lists are comma-separated."""
    if isinstance(default, (tuple, list)):
        item = default[0] if default else ""
        return tuple(parse_value(key, part.strip(), item) for part in text.split(",") if part.strip())
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(float(text)) if "e" in text.lower() else int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise ConfigError(f"--set {key}={text!r}: not a valid {type(default).__name__}") from None
    return text


def _checked(key: str, value: Any, default: Any) -> Any:
    """A value from a TOML file, checked against the parameter's type (ints are accepted for floats)."""
    if isinstance(default, (tuple, list)):
        if not isinstance(value, list):
            raise ConfigError(f"parameter {key}={value!r} must be a list like {list(default)!r}")
        item = default[0] if default else value[0] if value else ""
        return tuple(_checked(key, v, item) for v in value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(default):
        raise ConfigError(f"parameter {key}={value!r} must be a {type(default).__name__} like {default!r}")
    return value


def parameters(study: Study, preset: str, file_values: Mapping[str, Any] | None = None,
               sets: Sequence[str] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(params, train_overrides)``: the preset, then the TOML file's values, then ``--set key=value``.

    A key names a study parameter, or ``train.FIELD`` a ``TrainConfig`` field applied to every run
    (in a TOML file: top-level keys and a ``[train]`` table). Unknown keys raise ``ConfigError``
    listing the valid ones.
    """
    if preset not in study.presets:
        raise ConfigError(f"study {study.name!r} has no preset {preset!r}; presets: {sorted(study.presets)}")
    defaults = study.presets[preset]
    params, overrides = dict(defaults), {}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}

    def put(key: str, value: Any, from_text: bool) -> None:
        if key.startswith("train."):
            name = key.removeprefix("train.")
            if name not in fields or name == "run_dir":
                raise ConfigError(f"{key}: not a TrainConfig field; valid: train.<{'|'.join(sorted(fields))}>")
            overrides[name] = value
        elif key in defaults:
            params[key] = parse_value(key, value, defaults[key]) if from_text else _checked(key, value, defaults[key])
            if isinstance(defaults[key], (tuple, list)) and defaults[key] and not params[key]:
                example = ",".join(map(str, defaults[key]))
                raise ConfigError(f"parameter {key} is empty; give at least one value, e.g. --set {key}={example}")
        else:
            raise ConfigError(f"study {study.name!r} has no parameter {key!r}; parameters: {sorted(defaults)}, "
                              "or train.<TrainConfig field> for every run")

    for key, value in (file_values or {}).items():
        if key == "train" and isinstance(value, dict):
            for name, v in value.items():
                put(f"train.{name}", v, from_text=False)
        else:
            put(key, value, from_text=False)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        put(key.strip(), value.strip(), from_text=True)
    TrainConfig.from_dict(overrides)  # a bad train.* value fails here, naming the field
    return params, overrides
