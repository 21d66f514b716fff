"""``muonlab export RUN_DIR --out DIR``: a run's latest checkpoint as a Hugging Face model folder.

The folder holds ``config.json`` (Llama for dense models, DeepSeek-V3 for MLA and MoE models — see
:mod:`.hf_convert`), ``model.safetensors`` (fp32, as trained) and the run's tokenizer
(:mod:`.hf_tokenizer`; a fine-tuned run's carries muonlab's chat template, :mod:`muonlab.data.chat`),
so ``AutoModelForCausalLM.from_pretrained(DIR)`` and ``AutoTokenizer.from_pretrained(DIR)`` load it
and ``muonlab train --init_from DIR`` continues from it.

Before anything is written the exported model is run on a check sequence next to the run's own
model; the logits must agree to fp32 rounding. Everything is written into a temporary sibling of
``DIR`` that is renamed at the end, so a failed export leaves nothing behind, and an existing
non-empty ``DIR`` is never touched.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..data.chat import CHAT_TEMPLATE
from ..models import ModelConfig, Transformer
from ..rundir import read_config
from ..rundir.checkpoint import latest_checkpoint, load_checkpoint
from ..train.init_source import run_tokenizer
from .hf_convert import HFFormatError, check_exportable, hf_config, to_hf_state
from .hf_import import require_transformers
from .hf_tokenizer import write_tokenizer

__all__ = ["export_run"]

CHECK_TOLERANCE = 1e-4
"""Largest |Δ logit| allowed between the run's model and the export, relative to max(1, max |logit|)."""


def _run_model(run_dir: Path) -> tuple[dict, Transformer]:
    record = read_config(run_dir)
    if "model_config" not in record:
        raise HFFormatError(f"{run_dir}/config.json has no model_config; it was not written by muonlab train")
    cfg = ModelConfig.from_dict(record["model_config"])
    check_exportable(cfg)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise HFFormatError(f"{run_dir} has no complete checkpoint to export yet")
    model = Transformer(cfg)
    load_checkpoint(checkpoint, model, None, restore_rng=False)
    return record, model.eval()


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


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike) -> tuple[Path, float]:
    """Export the latest checkpoint of ``run_dir`` to the new folder ``out``; returns ``out`` and the
    logit difference of the check (see the module docstring)."""
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HFFormatError(f"{out} already exists and is not an empty folder; choose a new --out (nothing was "
                            "written)")
    record, model = _run_model(run_dir)
    tokenizer = run_tokenizer(record)
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
                        chat_template=CHAT_TEMPLATE if record.get("task") == "sft" else None)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, difference
