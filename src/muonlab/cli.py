"""The ``muonlab`` command line.

    muonlab demo                     train AdamW vs Muon on the built-in corpus, write runs/demo/report.md
    muonlab experiment --list        the studies that check the papers' claims, with their costs
    muonlab experiment NAME [--preset cpu|gpu] [--dry-run] [--set key=value ...]   run one, write its report
    muonlab train [--config F] [--key value ...]   one training run (``muonlab train --help`` lists every key)
    muonlab sft --init_from RUN [--key value ...]  fine-tune RUN on conversations, loss on the responses only
    torchrun --nproc_per_node=N -m muonlab.cli train --parallel {ddp,zero1,fsdp} ...   the same run on N processes
    muonlab report RUN... [--out D]  rebuild a report from run folders
    muonlab analyze spectra MUON_RUN ADAMW_RUN [--out D]   SVD entropy by matrix type (Moonlight Figure 4)
    muonlab presets                  list the model presets with their sizes
    muonlab export RUN --out DIR     a run as a Hugging Face model folder (Llama, or DeepSeek-V3 for MoE/MLA)
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings
from pathlib import Path

from .allocator import ensure_fast_allocator
from .console import in_launch, say_once
from .train_command import add_train_parser, fold_bool_values

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds} trains no run; give at least 1 seed per optimizer")
    sets = [f"seeds={','.join(map(str, range(args.seeds)))}", f"model={args.model}"]
    sets += ["compile=false"] if args.no_compile else []
    sets += [f"train_tokens={args.tokens}"] if args.tokens else []
    args.name, args.list, args.preset, args.dry_run, args.config = "demo", False, "cpu", False, None
    args.set = sets + list(args.set or [])
    return _cmd_experiment(args)


def _cmd_experiment(args: argparse.Namespace) -> int:
    from .experiments import command
    from .experiments.registry import get_study

    if args.list:
        print(command.list_text())
        return 0
    if not args.name:
        raise ValueError("name a study (muonlab experiment --list shows them)")
    if args.workers < 0:
        raise ValueError(f"--workers {args.workers} is negative; give the number of runs to train side by side "
                         "(0: the default for this machine)")
    study = get_study(args.name)
    study_plan = command.plan(study, args.preset, Path(args.out) if args.out else None, args.config, args.set or [])
    planned = study_plan.runs
    workers = args.workers or command.default_workers(study, planned)
    if args.dry_run:
        command.dry_run(study, args.preset, study_plan.projected_runs, workers)
        return 0
    from .experiments.lock import StudyBusyError
    from .experiments.runner import RunFailedError

    try:
        command.run_study(study_plan, workers, shlex.join(["muonlab", *args.argv]), show_progress=args.progress)
    except (RunFailedError, StudyBusyError) as err:
        print(f"muonlab {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


def _claim_output(args: argparse.Namespace, kind: str) -> Path:
    """The output folder of ``report``/``analyze``, claimed (never a folder of files muonlab did not write),
    after refusing unfinished runs unless ``--allow-unfinished`` (then each is named on stderr)."""
    from .rundir.outputs import output_folder, unfinished_runs

    for reason in unfinished_runs(args.runs, args.allow_unfinished, "--allow-unfinished"):
        print(f"muonlab {args.command}: warning: {reason}; its numbers are those of that step", file=sys.stderr)
    return output_folder(args.out, args.runs, kind)


def _cmd_report(args: argparse.Namespace) -> int:
    from .analysis.report import write_report
    from .rundir.ownership import folder_lock

    out = _claim_output(args, "report")
    with folder_lock(out, shlex.join(["muonlab", *args.argv])):
        print(f"report: {write_report(args.runs, out, title=args.title)}")
    return 0


def _cmd_analyze_spectra(args: argparse.Namespace) -> int:
    from .analysis.spectra_report import write_spectra_report
    from .rundir.ownership import folder_lock

    out = _claim_output(args, "spectra")
    with folder_lock(out, shlex.join(["muonlab", *args.argv])):
        report = write_spectra_report(args.runs, out)
    print(report.read_text(), end="")
    print(f"spectra report: {report}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run

    out, difference = export_run(args.run, args.out, allow_unfinished=args.allow_unfinished)
    print(f"exported {args.run} to {out} (logits agree with the run's to {difference:.1e}); load it with "
          f"AutoModelForCausalLM.from_pretrained({str(out)!r}) and AutoTokenizer.from_pretrained({str(out)!r}), or "
          f"continue training with muonlab train --init_from {out}")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from .models import describe_presets

    print(describe_presets(vocab_size=args.vocab_size, max_seq_len=args.seq_len, tie_embeddings=args.tie_embeddings))
    return 0


def _experiment_parser(sub) -> None:
    experiment = sub.add_parser(
        "experiment", help="run a study that checks a paper's claim: plan, train (resumable), report",
        description="Run a study: its runs are trained (finished ones skipped, interrupted ones resumed from their "
        "checkpoints), then report.md, plots, results.json and provenance.json are written from the run folders. "
        "Parameters come from the preset, then --config FILE.toml (top-level keys; a [train] table sets "
        "TrainConfig fields of every run), then --set key=value (train.FIELD=value for a TrainConfig field).")
    experiment.add_argument("name", nargs="?", help="the study (see --list)")
    experiment.add_argument("--list", action="store_true", help="list the studies with their claims and costs")
    experiment.add_argument("--preset", default="cpu", help="parameter preset: cpu (default) or gpu (one GPU)")
    experiment.add_argument("--dry-run", action="store_true",
                            help="print the plan and its estimated cost (measures a few steps once per machine)")
    experiment.add_argument("--out", help="output folder (default: runs/NAME, or runs/NAME-PRESET)")
    experiment.add_argument("--workers", type=int, default=0,
                            help="runs trained side by side, each on cores/workers threads (default: one per core "
                                 "on a CPU, 1 on a GPU; 1 = one after another in this process)")
    experiment.add_argument("--set", action="append", metavar="KEY=VALUE",
                            help="override a study parameter, or train.FIELD for every run (repeatable; lists "
                                 "are comma-separated: --set seeds=0,1,2)")
    experiment.add_argument("--config", help="a TOML (or JSON) file of parameter overrides")
    experiment.add_argument("--no-progress", dest="progress", action="store_false", help="no progress display")
    experiment.set_defaults(func=_cmd_experiment)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="muonlab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from .train.config import SFT_DEFAULTS

    demo = sub.add_parser("demo", help="AdamW vs Muon (same lr and weight decay) on the built-in corpus",
                          description="The demo study (muonlab experiment demo) with its own short flags.")
    demo.add_argument("--out", help="folder for the runs and report.md (default: runs/demo)")
    demo.add_argument("--seeds", type=int, default=3, help="seeds per optimizer (default: 3)")
    demo.add_argument("--workers", type=int, default=0,
                      help="runs trained side by side, each on cores/workers threads (default: one per core; "
                           "1 = one after another in this process)")
    demo.add_argument("--tokens", type=int, default=0, help="training tokens per run (default: the preset's)")
    demo.add_argument("--model", default="demo",
                      help="model preset, e.g. moe-demo for Moonlight's MoE + MLA shape (default: demo)")
    demo.add_argument("--no-compile", action="store_true",
                      help="do not torch.compile the model (compiling costs ~20 s once, then trains faster on CPU)")
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="no progress display")
    demo.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other parameter of the demo study")
    demo.set_defaults(func=_cmd_demo)

    _experiment_parser(sub)
    add_train_parser(sub, "train", "train one model; every TrainConfig field is a --flag", {})
    add_train_parser(sub, "sft", "fine-tune a run or model folder (--init_from) on conversations, loss on the "
                     f"responses only: muonlab train with {', '.join(f'{k}={v!r}' for k, v in SFT_DEFAULTS.items())}",
                     SFT_DEFAULTS)

    report = sub.add_parser("report", help="rebuild a report (report.md + plots) from run folders")
    report.add_argument("runs", nargs="+", help="run folders")
    report.add_argument("--out", help="a new (or empty) folder, or one an earlier report wrote (default: "
                        "report/ beside the first run)")
    report.add_argument("--allow-unfinished", action="store_true",
                        help="report unfinished runs too, as they are (named on stderr)")
    report.add_argument("--title", default="Muon vs AdamW")
    report.set_defaults(func=_cmd_report)

    analyze = sub.add_parser("analyze", help="analyses of finished run folders")
    analyses = analyze.add_subparsers(dest="analysis", required=True)
    spectra = analyses.add_parser(
        "spectra", help="Muon vs AdamW SVD entropy per matrix type (Moonlight §3.4): spectra.md + spectra.png",
        description="Compare two runs' SVD entropies (logged with --spectra_every, or from their final checkpoints).")
    spectra.add_argument("runs", nargs=2, metavar="RUN", help="two run folders, e.g. the Muon run and the AdamW run")
    spectra.add_argument("--out", help="a new (or empty) folder, or one an earlier spectra analysis wrote "
                         "(default: spectra/ beside the first run)")
    spectra.add_argument("--allow-unfinished", action="store_true",
                         help="analyse unfinished runs too, as they are (named on stderr)")
    spectra.set_defaults(func=_cmd_analyze_spectra)

    export = sub.add_parser("export", help="write a run's latest checkpoint as a Hugging Face model folder",
                            description="Dense models become Llama, MoE and MLA models DeepSeek-V3 (Moonlight's "
                            "format); safetensors weights and the run's tokenizer. Needs transformers.")
    export.add_argument("run", help="the run folder")
    export.add_argument("--out", required=True, help="a new (or empty) folder to write")
    export.add_argument("--allow-unfinished", action="store_true",
                        help="export an unfinished run's latest checkpoint too (its step named on stderr)")
    export.set_defaults(func=_cmd_export)

    presets = sub.add_parser("presets", help="list model presets and their parameter counts",
                             description="Parameter counts as `muonlab train --model NAME` builds the model: "
                             "untied LM head unless --tie_embeddings.")
    presets.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size (default: 4096, train's BPE)")
    presets.add_argument("--seq-len", type=int, default=256, help="sequence length (default: 256)")
    presets.add_argument("--tie_embeddings", action=argparse.BooleanOptionalAction, default=False,
                         help="count the LM head tied to the embedding, as `train --tie_embeddings` (default: untied)")
    presets.set_defaults(func=_cmd_presets)
    return parser


def _show_warnings(command: str) -> None:
    """muonlab's own warnings as ``muonlab COMMAND: warning: ...`` lines; under torchrun, each text once."""
    show = getattr(warnings.showwarning, "muonlab_original", warnings.showwarning)  # installed once per process

    def show_warning(message, category, filename, lineno, file=None, line=None):
        if "muonlab" in Path(filename).parts:
            say_once(f"muonlab {command}: warning: {message}", file=file)
        elif in_launch():
            say_once(warnings.formatwarning(message, category, filename, lineno, line).rstrip("\n"), file=file)
        else:
            show(message, category, filename, lineno, file, line)

    show_warning.muonlab_original = show
    warnings.showwarning = show_warning


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        ensure_fast_allocator(["-m", "muonlab.cli", *sys.argv[1:]])
        argv = sys.argv[1:]
    args = build_parser().parse_args(fold_bool_values(argv) if argv[:1] in (["train"], ["sft"]) else argv)
    args.argv = list(argv)
    _show_warnings(args.command)
    try:
        rc = args.func(args)
        sys.stdout.flush()  # here, so a closed pipe (muonlab presets | head) is caught below
        return rc
    except BrokenPipeError:
        # The reader stopped reading: as for any Unix command, no traceback; stdout goes nowhere from
        # now on so the interpreter's own final flush stays silent too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by a broken pipe
    except (ValueError, OSError, FloatingPointError) as err:
        if isinstance(err, OSError) and err.filename:  # a raw OS error: one sentence, not "[Errno 28] ..."
            from .rundir.ownership import describe_os_error

            err = describe_os_error(err)
        say_once(f"muonlab {args.command}: error: {err}")  # under torchrun: once, not once per process
        return 2
    except KeyboardInterrupt:
        say_once(f"muonlab {args.command}: interrupted; finished checkpoints are kept")
        return 130


if __name__ == "__main__":
    sys.exit(main())
