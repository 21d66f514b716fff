"""``muonlab export RUN_DIR --out DIR``: a run's latest checkpoint as a Hugging Face model folder.

The folder holds ``config.json`` (Llama for dense models, DeepSeek-V3 for MLA and MoE models — see
:mod:`muonlab.integrations.hf_convert`), ``model.safetensors`` (fp32, as trained) and the run's tokenizer
(:mod:`muonlab.integrations.hf_tokenizer`; a fine-tuned run's carries muonlab's chat template,
:mod:`muonlab.data.chat`), every file readable as the rest of the user's files are (the umask decides),
so ``AutoModelForCausalLM.from_pretrained(DIR)`` and ``AutoTokenizer.from_pretrained(DIR)`` load it
and ``muonlab train --init_from DIR`` continues from it.

Only a muonlab run folder is exported, and only a finished one unless asked (``allow_unfinished``:
then a warning names the step its latest checkpoint holds); the run folder's writer lock
(:func:`muonlab.rundir.ownership.folder_lock`) is held throughout, so a run being trained, or a
second export of it, stops at once naming the holder. Before anything is written the exported
model is run on a check sequence next to the run's own model; the logits must agree to fp32
rounding. Everything is written into a temporary sibling of ``DIR`` that is renamed at the end, so
a failed export leaves nothing behind, and an existing non-empty ``DIR`` is never touched. The
command lives beside the CLI: it reads a run folder (:func:`muonlab.load_run`) and writes a Hugging
Face folder, so ``integrations`` needs nothing from ``train``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import warnings
from pathlib import Path

import torch

from .data.chat import CHAT_TEMPLATE
from .integrations.hf_convert import HFFormatError, check_exportable, hf_config, to_hf_state
from .integrations.hf_import import require_transformers
from .integrations.hf_tokenizer import write_tokenizer
from .loading import LoadedRun, load_run
from .models import Transformer
from .rundir import read_config
from .rundir.outputs import unfinished_runs
from .rundir.ownership import folder_lock, is_run_folder

__all__ = ["export_run"]

CHECK_TOLERANCE = 1e-4
"""Largest |Δ logit| allowed between the run's model and the export, relative to max(1, max |logit|)."""


def _check_run_folder(run_dir: Path, allow_unfinished: bool) -> None:
    """Refuse what is not a muonlab run folder, and an unfinished run unless ``allow_unfinished`` (then warn)."""
    try:
        record = read_config(run_dir)
    except FileNotFoundError:
        raise HFFormatError(f"{run_dir} is not a run folder: it has no config.json") from None
    if "model_config" not in record:
        raise HFFormatError(f"{run_dir}/config.json has no model_config; it was not written by muonlab train")
    if not is_run_folder(run_dir):
        raise HFFormatError(f"{run_dir} is not a muonlab run folder (it has no .muonlab marker saying so); export "
                            "a folder muonlab train wrote")
    for reason in unfinished_runs([run_dir], allow_unfinished, "--allow-unfinished"):
        warnings.warn(f"{reason}; exporting that step's checkpoint as it is", stacklevel=3)


def _run_model(run_dir: Path) -> LoadedRun:
    with warnings.catch_warnings():  # load_run's init_from warning of an unfinished run: export gave its own
        warnings.filterwarnings("ignore", message="init_from: ")
        run = load_run(run_dir)
    check_exportable(run.model.config)
    return run


@torch.no_grad()
def _check_logits(model: Transformer, hf_model: torch.nn.Module) -> float:
    """max |Δ logit| of the two models on a fixed check sequence; raises if beyond ``CHECK_TOLERANCE``."""
    cfg = model.config
    ids = torch.randint(0, cfg.vocab_size, (1, min(32, cfg.max_seq_len)), generator=torch.Generator().manual_seed(0))
    ours, theirs = model(ids), hf_model(input_ids=ids).logits
    difference = float((ours - theirs).abs().max())
    if not difference <= CHECK_TOLERANCE * max(1.0, float(ours.abs().max())):
        raise HFFormatError(f"the exported model's logits differ from the run's by {difference:.3g} on a check "
                            "sequence, so nothing was written; this is a muonlab bug, please report it")
    return difference


def _readable_like_other_outputs(folder: Path) -> None:
    """Give the export's files the mode any file this process creates gets (0666 less the umask): the
    temporary folder and some writers (safetensors) create them readable by the owner alone."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike,
               allow_unfinished: bool = False) -> tuple[Path, float]:
    """Export the latest checkpoint of the run folder ``run_dir`` to the new folder ``out``; returns ``out``
    and the logit difference of the check (see the module docstring).

    Raises ``ValueError`` in one sentence (nothing written) for a folder that is not a muonlab run, an
    unfinished run without ``allow_unfinished``, a run folder another process is writing, or an ``out``
    that exists and is not empty.
    """
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HFFormatError(f"{out} already exists and is not an empty folder; choose a new --out (nothing was "
                            "written)")
    _check_run_folder(run_dir, allow_unfinished)
    with folder_lock(run_dir, shlex.join(["muonlab export", str(run_dir), "--out", str(out)])):
        return _export(run_dir, out)


def _export(run_dir: Path, out: Path) -> tuple[Path, float]:
    run = _run_model(run_dir)
    model, tokenizer = run.model, run.tokenizer
    transformers = require_transformers()
    model_type, kwargs = hf_config(model.config, tokenizer.eot_id)
    hf_model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(model_type, **kwargs),
                                                             dtype=torch.float32)
    hf_model.load_state_dict(to_hf_state(model.state_dict(), model.config), strict=True)
    difference = _check_logits(model, hf_model.eval())
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        hf_model.save_pretrained(tmp)
        write_tokenizer(tokenizer, tmp, model.config.max_seq_len,
                        chat_template=CHAT_TEMPLATE if run.record.get("task") == "sft" else None)
        _readable_like_other_outputs(tmp)
        try:
            if out.exists():
                out.rmdir()
            os.replace(tmp, out)
        except OSError:
            raise HFFormatError(f"{out} was filled by another process during the export; choose a new --out "
                                "(nothing was written)") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, difference
