"""A study's outputs in its folder: ``report.md``, ``results.json`` and ``provenance.json`` (plots come from
the study's ``analyse``).

``results.json`` holds only what the run folders determine (the study's numbers, its parameters and
each run's final validation loss, tokens and epochs), so an interrupted and resumed study writes
the same file as an uninterrupted one. Where and how it ran — for every invocation that wrote into
the folder (a killed one and the one that finished it, say): the exact command, the git revision,
the machine (CPU model, cores, torch, GPU), its wall time and the runs it trained — goes to
``provenance.json`` and the report's last section.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..analysis.runs import Run
from .protocol import epochs, protocol_section
from .study import Analysis, Study

__all__ = ["PROVENANCE_FILE", "REPORT_FILE", "RESULTS_FILE", "record_start", "runs_table", "write_outputs"]

REPORT_FILE = "report.md"
RESULTS_FILE = "results.json"
PROVENANCE_FILE = "provenance.json"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cell(value: Any, spec: str = "") -> str:
    if value is None:
        return "—"
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def runs_table(runs: Mapping[str, Run]) -> str:
    """One markdown row per run: optimizer, lr, weight decay, seed, parameters, tokens, epochs, final val loss."""
    header = ["run", "optimizer", "lr", "weight decay", "seed", "parameters", "tokens", "epochs", "final val loss"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, run in runs.items():
        c = run.config
        tokens = run.final("tokens")
        cells = [name, run.optimizer, _cell(c.get("lr"), "g"), _cell(c.get("weight_decay"), "g"), _cell(c.get("seed")),
                 _cell(c.get("num_params"), ","), _cell(None if tokens is None else int(tokens), ","),
                 _cell(epochs(run), ".2f"), _cell(run.final("val_loss"), ".4f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _results(study: Study, preset: str, params: Mapping[str, Any], runs: Mapping[str, Run],
             analysis: Analysis) -> dict[str, Any]:
    per_run = {name: {"optimizer": run.optimizer, "seed": run.config.get("seed"),
                      "final_val_loss": run.final("val_loss"), "tokens": run.final("tokens"), "epochs": epochs(run)}
               for name, run in runs.items()}
    return {"study": study.name, "preset": preset, "params": dict(params), "results": analysis.results,
            "runs": per_run}


def _recorded(out: Path) -> dict[str, Any]:
    try:
        provenance = json.loads((out / PROVENANCE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {"invocations": []}
    if not isinstance(provenance, dict) or not isinstance(provenance.get("invocations"), list):
        return {"invocations": []}
    return provenance


def record_start(out: Path, invocation: dict[str, Any]) -> None:
    """Add ``invocation`` (``wall_s`` None: not finished) to ``provenance.json`` before any training, so an
    invocation that is killed stays on record; ``write_outputs`` completes it (same ``started``)."""
    provenance = _recorded(out)
    provenance["invocations"].append({**invocation, "wall_s": None})
    out.mkdir(parents=True, exist_ok=True)
    _write(out / PROVENANCE_FILE, json.dumps(provenance, indent=2) + "\n")


def _invocations(out: Path, invocation: dict[str, Any]) -> list[dict[str, Any]]:
    """The invocations recorded before this one (a killed study's, say), then this one (replacing its start:
    the unfinished record of the same ``started``; a finished one of the same second stays)."""
    previous = [p for p in _recorded(out)["invocations"] if isinstance(p, dict)
                and not (p.get("started") == invocation.get("started") and p.get("wall_s") is None)]
    return [*previous, invocation]


def _against_estimate(invocation: Mapping[str, Any]) -> str:
    """`` (R× the X min estimated at its start)`` for an invocation that trained with a calibration; ''
    otherwise. The estimate covers the runs planned at the start, not those a growing plan added."""
    est = invocation.get("estimate_s")
    if not est or not invocation.get("trained"):
        return ""
    return f" ({invocation['wall_s'] / est:.2f}× the {est / 60:.1f} min estimated at its start)"


def _provenance_md(provenance: Mapping[str, Any], out: Path, runs: Mapping[str, Run]) -> str:
    last = provenance["invocations"][-1]
    m = last["machine"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    folders = ", ".join(f"`{os.path.relpath(run.path, out)}`" for run in runs.values())
    history = [f"  {i}. {p.get('started', '?')}: `{p.get('command')}` at "
               f"`{p.get('git_revision') or 'unknown revision'}`"
               + (f", {p['wall_s'] / 60:.1f} min{_against_estimate(p)}; trained " if p.get("wall_s") is not None
                  else ", did not finish (stopped or killed); set out to train ")
               + (', '.join(p.get('trained', [])) or 'nothing (all runs were finished)')
               for i, p in enumerate(provenance["invocations"], 1)]
    return "\n".join([
        f"```bash\n{last['command']}\n```",
        "",
        f"- git revision: `{last['git_revision'] or 'unknown (not a git checkout)'}`",
        f"- machine: {m['cpu']}, {m['cores']} cores{gpu}; torch {m['torch']}, Python {m['python']}, {m['os']}",
        f"- the runs' training steps took {provenance['train_s'] / 60:.1f} min in all (summed over runs); "
        "the invocations that made this folder:",
        *history,
        f"- run folders (config.json, metrics.jsonl, checkpoints): {folders}",
        "- `results.json` holds the numbers above; `provenance.json` this section.",
    ])


def write_outputs(study: Study, preset: str, params: Mapping[str, Any], runs: Mapping[str, Run], analysis: Analysis,
                  out: Path, invocation: dict[str, Any]) -> Path:
    """Write ``report.md``, ``results.json`` and ``provenance.json`` into ``out``; return the report's path.

    ``invocation``: this command's ``started`` (time stamp), ``command``, ``git_revision``, ``machine``
    (``provenance.machine()``), ``wall_s``, ``estimate_s`` (the wall time estimated at its start from the
    machine's calibration, None without one) and ``trained`` (the runs left to train when it started: all of
    them were trained if it finished, some if it was killed, as ``wall_s`` None records); ``provenance.json``
    keeps every invocation that wrote into ``out``, and ``train_s``, the runs' summed training time
    from their metrics.
    """
    provenance = {"invocations": _invocations(out, invocation),
                  "train_s": sum(run.final("wall_s") or 0.0 for run in runs.values())}
    figures: Sequence[tuple[str, Path]] = [(c, p) for c, p in analysis.figures if p is not None]
    parts = [f"# {study.title}", f"**Claim checked.** {study.claim}",
             f"Study `{study.name}`, preset `{preset}`; parameters: "
             + ", ".join(f"`{k}={v}`" for k, v in params.items()) + "."]
    for heading, body in analysis.sections:
        parts += [f"## {heading}", body]
    parts += ["## Runs", runs_table(runs), "## Protocol", protocol_section(list(runs.values()))]
    if figures:
        parts += ["## Plots", "\n\n".join(f"### {caption}\n\n![{caption}]({Path(p).name})" for caption, p in figures)]
    parts += ["## How this was made", _provenance_md(provenance, out, runs)]
    out.mkdir(parents=True, exist_ok=True)
    _write(out / RESULTS_FILE, json.dumps(_results(study, preset, params, runs, analysis), indent=2) + "\n")
    _write(out / PROVENANCE_FILE, json.dumps(provenance, indent=2) + "\n")
    report = out / REPORT_FILE
    _write(report, "\n\n".join(parts) + "\n")
    return report
