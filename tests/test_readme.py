"""The README's and the documentation pages' code, run: every fenced ``python`` and ``bash`` block of
``README.md`` and ``docs/**/*.md`` carries a marker in the line above it, ``<!-- test: NAME -->`` (run
here by ``RUNNERS[NAME]``) or ``<!-- not run by the tests: REASON -->``. A docs page that shows a README
section (``<!-- readme-section: TITLE -->``, see ``scripts/docs_hooks.py``) shows the README's blocks,
checked here once.

Blocks run at tiny sizes: ``muonlab train``/``sft`` lines get flags appended (argparse keeps the last
value) that shrink the model, data and budget, and torchrun lines run on gloo with 2 or 4 processes.
Python blocks run with the names they leave to the reader (``model``, ``data``, ``args``) bound to
tiny stand-ins.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from muonlab.cli import main
from muonlab.models import Transformer, preset

from conftest import tiny_config_dict

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MARKER = re.compile(r"<!-- (test: (?P<name>[\w-]+)|not run by the tests: (?P<reason>.+?)) -->")


def pages() -> list[Path]:
    """The README, then every page of the documentation site."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def readme_blocks() -> list[tuple[str, str, str, str]]:
    """``(marker line, language, code, where)`` of every fenced python/bash block of the README and the
    docs pages (marker "" when missing; where = ``file:line``)."""
    blocks = []
    for page in pages():
        lines = page.read_text().splitlines()
        i = 0
        while i < len(lines):
            fence = re.fullmatch(r"\s*```(python|bash)\s*", lines[i])
            if fence:
                end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
                blocks.append((lines[i - 1].strip() if i else "", fence.group(1), "\n".join(lines[i + 1:end]),
                               f"{page.relative_to(README.parent)}:{i + 1}"))
                i = end
            i += 1
    return blocks


def _block(name: str) -> str:
    return next(code for marker, _, code, _ in readme_blocks() if marker == f"<!-- test: {name} -->")


TINY = ["--tokenizer", "byte", "--seq_len", "64", "--batch_size", "2", "--train_tokens", "256", "--warmup_steps", "1",
        "--eval_every", "2", "--eval_batches", "1", "--log_every", "1", "--telemetry_every", "2", "--device", "cpu",
        "--dtype", "fp32", "--no-progress"]
SMALLER_MODEL = {"demo": "tiny", "moe-demo": "moe-tiny"}


def _tiny_argv(argv: list[str], corpus: Path) -> list[str]:
    """A README command line with the tiny settings appended (and the model preset shrunk)."""
    argv = [SMALLER_MODEL.get(a, a) for a in argv]
    command = argv[0] if argv[0] in ("train", "sft") else argv[argv.index("muonlab.cli") + 1]
    extra = list(TINY) + ["--corpus", str(corpus)]
    if command == "train" and "--init_from" not in argv:
        extra += [] if "--model" in argv else ["--model", "tiny"]
        extra += ["--n_heads", "2"] if "--tp" in argv and "moe" not in " ".join(argv) else []
    if command == "sft":  # the model, tokenizer and conversations come from the README's own flags
        extra = list(TINY[2:])
    return argv + extra


def _commands(code: str) -> list[list[str]]:
    return [shlex.split(line, comments=True) for line in code.splitlines() if shlex.split(line, comments=True)]


def _run_bash(code: str, corpus: Path) -> None:
    for argv in _commands(code):
        if argv[0] == "muonlab" and argv[1] in ("train", "sft"):
            if "--help" in argv:
                with pytest.raises(SystemExit) as info:
                    main(argv[1:])
                assert info.value.code == 0
                continue
            assert main(_tiny_argv(argv[1:], corpus)) == 0, argv
        elif argv[0] == "muonlab":
            assert main(argv[1:]) == 0, argv
        else:
            raise AssertionError(f"no runner for {argv[0]!r} in README block: {code}")


@pytest.fixture
def workdir(tmp_path, monkeypatch, muonlab_cache, single_thread):
    monkeypatch.chdir(tmp_path)
    return tmp_path


class _LossModel(torch.nn.Module):
    """``model(batch) -> loss``, as the README's loop calls it: a tiny Transformer on next-token prediction."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = Transformer(preset("tiny", 64, 16, tie_embeddings=False, n_heads=2))

    def forward(self, batch):
        return self.net(batch[:, :-1], batch[:, 1:])


def test_every_block_is_run_or_says_why_not():
    blocks = readme_blocks()
    unmarked = [where for marker, _, _, where in blocks if not MARKER.fullmatch(marker)]
    assert not unmarked, f"code blocks at {unmarked} carry no marker"
    named = [MARKER.fullmatch(m).group("name") for m, _, _, _ in blocks if MARKER.fullmatch(m).group("name")]
    assert sorted(set(named)) == sorted(RUNNERS) and len(named) == len(set(named))


def test_the_marker_check_finds_an_unmarked_block(tmp_path, monkeypatch):
    """Negative control: one unmarked block in a docs page fails the check above, naming where it is."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("text\n")
    (tmp_path / "docs" / "page.md").write_text("text\n```python\nprint(1)\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "README", tmp_path / "README.md")
    monkeypatch.setattr(sys.modules[__name__], "DOCS", tmp_path / "docs")
    with pytest.raises(AssertionError, match=r"at \['docs/page.md:2'\] carry no marker"):
        test_every_block_is_run_or_says_why_not()


def test_the_docs_cover_the_guide_and_the_api():
    """Every docs page is in the site's navigation, and every page the README links exists."""
    nav = (ROOT / "mkdocs.yml").read_text()
    listed = set(re.findall(r":\s*(\S+\.md)\s*$", nav, re.MULTILINE))
    assert listed == {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    linked = re.findall(r"\]\((docs/[^)#]+\.md)", README.read_text())
    assert linked and all((ROOT / link).is_file() for link in linked), linked


def _optimizer_namespace() -> dict:
    data = [torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    return {"model": _LossModel(), "data": data}


def run_optimizer_loop(corpus):
    namespace = _optimizer_namespace()
    before = [p.detach().clone() for p in namespace["model"].parameters()]
    exec(_block("optimizer-loop").replace("model = ...", "model = model", 1), namespace)
    assert all(not torch.equal(a, p) for a, p in zip(before, namespace["model"].parameters()))


def run_telemetry(corpus):
    namespace = _optimizer_namespace()
    exec(_block("optimizer-loop").replace("model = ...", "model = model", 1), namespace)
    namespace["model"](namespace["data"][0]).backward()
    exec(_block("telemetry"), namespace)
    assert 0.05 < namespace["optimizer"].last_telemetry["update_rms/muon"] < 1.0


def run_qk_clip(corpus):
    namespace = _optimizer_namespace()
    code = _block("qk-clip").replace("...", "model(data[0]).backward(); optimizer.step(); optimizer.zero_grad()", 1)
    exec(code, namespace)
    assert "qk_clip/heads_clipped" in namespace["optimizer"].qk_clip.stats()


def run_training_runs(corpus):
    Path("my.toml").write_text(f'run_dir = "runs/from-toml"\ncorpus = "{corpus}"\n')
    for name in ("a", "b"):
        assert main(_tiny_argv(["train", "--run_dir", f"runs/{name}"], corpus)) == 0
    _run_bash(_block("training-runs"), corpus)
    assert (Path("runs/cmp") / "report.md").is_file() and (Path("runs/from-toml") / "config.json").is_file()


def run_load_run(corpus):
    assert main(_tiny_argv(["train", "--run_dir", "runs/my-run"], corpus)) == 0
    namespace: dict = {}
    exec(_block("load-run"), namespace)
    assert namespace["logits"].shape[:2] == (1, len("In the beginning"))


def run_spectra(corpus):
    _run_bash(_block("spectra"), corpus)
    assert list(Path("runs/moe").rglob("spectra.md"))


def run_hf_export(corpus):
    pytest.importorskip("transformers")
    assert main(_tiny_argv(["train", "--run_dir", "runs/my-run"], corpus)) == 0
    _run_bash(_block("hf-export"), corpus)
    assert (Path("runs/finetune") / "config.json").is_file()


def run_hf_trainer(corpus):
    tf = pytest.importorskip("transformers")
    from hf_models import build

    args = tf.TrainingArguments(output_dir="trainer", use_cpu=True, learning_rate=1e-3, max_steps=1, report_to=[])
    data = [{"input_ids": torch.arange(8), "labels": torch.arange(8)}] * 2
    namespace = {"model": build("llama"), "args": args, "data": data}
    exec(_block("hf-trainer"), namespace)
    namespace["trainer"].train()
    optimizer = namespace["trainer"].optimizer
    assert type(getattr(optimizer, "optimizer", optimizer)).__name__ == "Muon"  # inside accelerate's wrapper


def run_sft(corpus):
    Path("chat.jsonl").write_text("".join(json.dumps({"prompt": f"{i}", "response": f"{i}"}) + "\n"
                                          for i in range(40)))
    code = _block("sft").replace("--init_from runs/base --run_dir runs/sft",
                                 "--init_from runs/base --corpus chat.jsonl --run_dir runs/sft")
    _run_bash(code, corpus)
    assert (Path("runs/chat") / "finished.json").is_file() or (Path("runs/chat") / "config.json").is_file()


def _torchrun(nproc: int, argv: list[str], timeout: int = 900) -> None:
    env = {**os.environ, "MUONLAB_ALLOCATOR": "default", "OMP_NUM_THREADS": "1"}
    # --standalone: the launcher binds a free port itself (the default, 29500, collides with any other launch)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           *argv],
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _torchrun_cli(code: str, corpus: Path, nproc: int | None = None) -> None:
    processes = 1
    for argv in _commands(code):
        if argv[0] == "muonlab":  # the same run continued on one process: the same global batch
            assert main(_tiny_argv(argv[1:], corpus) + ["--batch_size", str(2 * processes)]) == 0, argv
            continue
        assert argv[0] == "torchrun", argv
        processes = nproc or int(argv[1].split("=")[1])
        _torchrun(processes, _tiny_argv(argv[2:], corpus))


def run_torchrun_fsdp(corpus):
    _torchrun_cli(_block("torchrun-fsdp"), corpus, nproc=2)


def run_torchrun_mesh_cli(corpus):
    _torchrun_cli(_block("torchrun-mesh-cli"), corpus)


PRELUDE = """
import torch
from muonlab.models import Transformer, preset
from muonlab.optim import Muon, param_groups
torch.manual_seed(0)
model = Transformer(preset("tiny", 64, 16, tie_embeddings=False, n_heads=2))
moe_model = Transformer(preset("moe-tiny", 64, 16, tie_embeddings=False))
"""
STEP = """
x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
model(x[:, :-1], x[:, 1:]).backward()
optimizer.step()
print("stepped", flush=True)
# as `muonlab train` does under torchrun: skip the interpreter teardown, where gloo's threads can abort
torch.distributed.destroy_process_group()
import os
os._exit(0)
"""


def _torchrun_python(code: str, nproc: int, tmp: Path) -> None:
    script = tmp / "snippet.py"
    script.write_text(PRELUDE + code.replace('init_runtime("zero1")', 'init_runtime("zero1", "cpu")')
                      .replace('mesh_shape={"dp_shard": 2, "tp": 2})', 'mesh_shape={"dp_shard": 2, "tp": 2}, '
                               'device="cpu")') + STEP)
    _torchrun(nproc, [str(script)])


def run_torchrun_zero1(corpus):
    _torchrun_python(_block("torchrun-zero1"), 2, Path.cwd())


def run_torchrun_mesh(corpus):
    _torchrun_python(_block("torchrun-mesh"), 4, Path.cwd())


RUNNERS = {
    "optimizer-loop": run_optimizer_loop, "telemetry": run_telemetry, "qk-clip": run_qk_clip,
    "training-runs": run_training_runs, "load-run": run_load_run, "spectra": run_spectra, "hf-export": run_hf_export,
    "hf-trainer": run_hf_trainer, "sft": run_sft, "torchrun-fsdp": run_torchrun_fsdp,
    "torchrun-mesh-cli": run_torchrun_mesh_cli, "torchrun-zero1": run_torchrun_zero1,
    "torchrun-mesh": run_torchrun_mesh,
}
DISTRIBUTED = {"torchrun-fsdp", "torchrun-mesh-cli", "torchrun-zero1", "torchrun-mesh"}


@pytest.mark.parametrize("name", sorted(set(RUNNERS) - DISTRIBUTED))
def test_readme_block_runs(name, workdir, tiny_corpus):
    RUNNERS[name](tiny_corpus)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DISTRIBUTED))
def test_readme_torchrun_block_runs(name, workdir, tiny_corpus):
    RUNNERS[name](tiny_corpus)


def test_tiny_settings_reach_the_run(tiny_corpus):
    """The appended flags win over the README's own (argparse keeps the last), so the runs stay tiny."""
    from muonlab.cli import build_parser

    args = build_parser().parse_args(_tiny_argv(["train", "--model", "moe-demo", "--train_tokens", "5000000"],
                                                tiny_corpus))
    assert (args.model, args.train_tokens, args.corpus) == ("moe-tiny", "256", str(tiny_corpus))
    assert tiny_config_dict(tiny_corpus, Path("x"))["model"] == "tiny"
