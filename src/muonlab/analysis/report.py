"""Write ``report.md`` comparing run folders: headline, per-run table, plots, and how to reproduce.

The headline answers the question the runs were made for: for each optimizer, the mean final
validation loss over seeds and the seed-to-seed standard deviation; the gap between optimizers;
and, plainly, whether that gap is larger than the spread between seeds. When an optimizer was run
with several configurations (say an lr sweep), its best one (lowest mean final validation loss) is
used for the headline and the report says so.
"""

from __future__ import annotations

import os
import shlex
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from muonlab.analysis import plots
from muonlab.analysis.runs import Run, group_by_config, load_runs

REPORT_FILE = "report.md"
BASELINE_OPTIMIZER = "adamw"


@dataclass
class OptimizerSummary:
    """Final validation loss of one optimizer's best config group: mean and sample std over seeds."""

    optimizer: str
    runs: list[Run]
    mean: float
    std: float | None  # None with a single seed: the spread is unknown
    n_configs: int  # how many configs of this optimizer were compared to pick ``runs``


def summarize_by_optimizer(runs: Iterable[Run]) -> dict[str, OptimizerSummary]:
    """Per optimizer (sorted by name), the config group with the lowest mean final ``val_loss``.

    Runs that never logged ``val_loss`` are left out. ``std`` is the sample standard deviation
    (ddof=1) of the group's final validation losses, None for a single run.
    """
    by_optimizer: dict[str, list[list[Run]]] = {}
    for group in group_by_config(r for r in runs if r.final("val_loss") is not None):
        by_optimizer.setdefault(group[0].optimizer, []).append(group)
    summaries = {}
    for optimizer in sorted(by_optimizer):
        groups = by_optimizer[optimizer]
        finals = [[r.final("val_loss") for r in g] for g in groups]
        best = min(range(len(groups)), key=lambda i: statistics.fmean(finals[i]))
        values = finals[best]
        summaries[optimizer] = OptimizerSummary(
            optimizer=optimizer,
            runs=groups[best],
            mean=statistics.fmean(values),
            std=statistics.stdev(values) if len(values) > 1 else None,
            n_configs=len(groups),
        )
    return summaries


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def headline(summaries: dict[str, OptimizerSummary]) -> str:
    """The headline paragraph (markdown) for ``summarize_by_optimizer`` output."""
    if not summaries:
        return "No run logged a validation loss (`val_loss`), so there is nothing to compare."
    lines = []
    for s in summaries.values():
        spread = f"seed-to-seed std {s.std:.4f}" if s.std is not None else "seed-to-seed std unknown (one seed)"
        best = f", best of {s.n_configs} configs (lr={s.runs[0].config.get('lr', '?')})" if s.n_configs > 1 else ""
        lines.append(
            f"- **{s.optimizer}**: mean final validation loss {s.mean:.4f} over {_seeds(len(s.runs))}, {spread}{best}"
        )
    baseline = BASELINE_OPTIMIZER if BASELINE_OPTIMIZER in summaries else next(iter(summaries))
    base = summaries[baseline]
    lines.append("")
    for s in summaries.values():
        if s is base:
            continue
        gap = s.mean - base.mean
        direction = "lower" if gap < 0 else "higher"
        sentence = (
            f"{s.optimizer} − {baseline} = {gap:+.4f}: {s.optimizer}'s final validation loss is "
            f"{abs(gap):.4f} {direction} than {baseline}'s."
        )
        if s.std is None or base.std is None:
            sentence += (
                " With a single seed for at least one optimizer the seed-to-seed spread is unknown, "
                "so run more seeds before reading anything into this gap."
            )
        else:
            spread = max(s.std, base.std)
            if abs(gap) > spread:
                sentence += (
                    f" The gap is larger than the seed-to-seed std ({spread:.4f}), "
                    "so it exceeds the spread between seeds."
                )
            else:
                sentence += (
                    f" The gap is not larger than the seed-to-seed std ({spread:.4f}), "
                    "so these runs do not separate the optimizers."
                )
        lines.append(sentence)
    return "\n".join(lines)


def _fmt(value: Any, spec: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return "—" if value is None else str(value)


def _run_table(runs: Sequence[Run]) -> str:
    header = [
        "run", "optimizer", "lr", "weight decay", "seed", "final val loss", "tokens trained",
        "tokens/s (median)", "optimizer step ms (median)", "update RMS, Muon params (median)",
        "update RMS, AdamW params (median)",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        tokens = run.final("tokens")
        cells = [
            run.name.replace("|", "\\|"),
            run.optimizer,
            _fmt(run.config.get("lr"), "g"),
            _fmt(run.config.get("weight_decay"), "g"),
            _fmt(run.config.get("seed"), ""),
            _fmt(run.final("val_loss"), ".4f"),
            _fmt(None if tokens is None else int(tokens), ","),
            _fmt(run.median("tokens_per_s"), ",.0f"),
            _fmt(run.median("optim_step_ms"), ".2f"),
            _fmt(run.median("update_rms/muon"), ".3f"),
            _fmt(run.median("update_rms/adamw"), ".3f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _reproduce(runs: Sequence[Run], out_dir: Path) -> str:
    commands = []
    for run in runs:
        command = run.config.get("command")
        if command:
            text = shlex.join(command) if isinstance(command, list) else str(command)
            commands.append(f"# {run.name}\n{text}")
    folders = "\n".join(f"- `{os.path.relpath(run.path, out_dir)}`" for run in runs)
    parts = [f"Run folders (each holds `config.json`, the fully resolved config, and `metrics.jsonl`):\n\n{folders}"]
    if commands:
        block = "\n".join(commands)
        parts.insert(0, f"Commands, as recorded in each run's `config.json`:\n\n```bash\n{block}\n```")
    return "\n\n".join(parts)


def write_report(
    run_dirs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    title: str = "Muon vs AdamW",
    intro: str | None = None,
) -> Path:
    """Read the run folders, write the plots and ``report.md`` into ``out_dir``; return the report path.

    ``intro`` (markdown) is placed under the title: what was trained and why.

    The report holds the headline (``headline``), one table row per run (optimizer, lr, weight
    decay, seed, final val loss, tokens trained, median tokens/s, median optimizer-step ms, median
    update RMS of the Muon- and AdamW-routed params), the plots as relative PNG links, and the
    commands that reproduce the runs (``config["command"]`` when recorded).
    """
    runs = load_runs(run_dirs)
    if not runs:
        raise ValueError("write_report needs at least one run folder")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = [
        ("Validation loss vs tokens", plots.plot_val_loss(runs, out_dir / "val_loss_vs_tokens.png", x="tokens")),
        ("Validation loss vs wall-clock time", plots.plot_val_loss(runs, out_dir / "val_loss_vs_time.png", x="wall_s")),
        ("Validation loss by optimizer, mean ± std over seeds",
         plots.plot_val_loss_by_optimizer(runs, out_dir / "val_loss_by_optimizer.png")),
        ("Update RMS per step", plots.plot_update_rms(runs, out_dir / "update_rms.png")),
    ]  # fmt: skip
    figure_md = "\n\n".join(f"### {caption}\n\n![{caption}]({path.name})" for caption, path in figures if path)

    text = "\n\n".join(
        [
            f"# {title}",
            *([intro] if intro else []),
            "## Headline",
            headline(summarize_by_optimizer(runs)),
            "## Runs",
            _run_table(runs),
            "## Plots",
            figure_md or "No run logged the metrics these plots need (`val_loss`, `update_rms/*`).",
            "## How to reproduce",
            _reproduce(runs, out_dir),
        ]
    )
    report = out_dir / REPORT_FILE
    tmp = out_dir / f".{REPORT_FILE}.tmp-{os.getpid()}"
    tmp.write_text(text + "\n")
    os.replace(tmp, report)
    return report
