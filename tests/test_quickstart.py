"""``scripts/quickstart``'s torch decision (``scripts/quickstart torch-plan`` prints it, installs nothing).

The GPU is faked with an ``nvidia-smi`` on ``PATH`` that lists one (or fails, as it does without a
driver); PyTorch's CPU index is faked with a local HTTP server (reachable) or a bound socket that
does not listen (unreachable). The venv without torch is a fresh ``venv --without-pip``.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "scripts" / "quickstart"

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the CPU-index branch is the Linux one")


def _fake_nvidia_smi(folder: Path, gpu: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    body = ('echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"' if gpu else
            'echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver." >&2; exit 9')
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return folder


def _plan(venv: Path, bin_dir: Path, cpu_index: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUONLAB_VENV": str(venv), "MUONLAB_TORCH_CPU_INDEX": cpu_index,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(QUICKSTART), "torch-plan"], env=env, capture_output=True, text=True, timeout=120,
                          check=True)


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("quickstart") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return venv


@pytest.fixture(scope="module")
def cpu_index(tmp_path_factory):
    """A reachable stand-in for https://download.pytorch.org/whl/cpu (serves ``torch/``)."""
    root = tmp_path_factory.mktemp("cpu-index")
    (root / "torch").mkdir()
    (root / "torch" / "index.html").write_text("<html></html>")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.fixture
def unreachable_index():
    """An address that refuses connections: a socket bound (so no one else takes the port) but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_no_gpu_installs_the_cpu_build_from_the_cpu_index(bare_venv, cpu_index, tmp_path):
    result = _plan(bare_venv, _fake_nvidia_smi(tmp_path, gpu=False), cpu_index)
    assert result.stdout.split("  #")[0] == f"install torch==2.13.0 --index-url {cpu_index}"
    assert result.stderr == ""


def test_gpu_installs_the_default_build(bare_venv, cpu_index, tmp_path):
    result = _plan(bare_venv, _fake_nvidia_smi(tmp_path, gpu=True), cpu_index)
    assert result.stdout.split("  #")[0] == "install torch==2.13.0"
    assert "NVIDIA GPU" in result.stdout and result.stderr == ""


def test_unreachable_cpu_index_falls_back_with_one_notice(bare_venv, unreachable_index, tmp_path):
    result = _plan(bare_venv, _fake_nvidia_smi(tmp_path, gpu=False), unreachable_index)
    assert result.stdout.split("  #")[0] == "install torch==2.13.0"
    notice = result.stderr.strip().splitlines()
    assert len(notice) == 1 and unreachable_index in notice[0] and "cannot be reached" in notice[0]


@pytest.mark.parametrize("gpu", [False, True])
def test_a_working_torch_is_kept(gpu, unreachable_index, tmp_path):
    # This interpreter's environment has torch >= 2.9: nothing is installed over it, GPU or not.
    result = _plan(Path(sys.prefix), _fake_nvidia_smi(tmp_path, gpu=gpu), unreachable_index)
    assert result.stdout.split("  #")[0] == f"keep torch {torch.__version__}"
    assert result.stderr == ""
