"""Helpers for the multi-process tests: a tiny transformer with awkward shapes, process spawning on gloo.

``HarnessModel`` is a 2-block causal transformer whose matrices have dims not divisible by 2 or
3 (vocab 67, MLP width 35), plus a dense mixture over a 3-D expert stack ``[5, 20, 20]`` (role
``expert``; 5 experts split 3+2 on two ranks and 2+2+1 on three). Its MLP input matrix is stored
``[in, out]`` = ``[20, 35]`` and declared as 5 fused projections, which ``param_groups(...,
split_fused=True)`` orthogonalizes as 5 transposed blocks ``[7, 20]``. ``spawn`` runs a function on N
gloo processes with one torch thread each and returns what each rank returned.
"""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

VOCAB, D, FFN, EXPERTS, HEADS, SEQ = 67, 20, 35, 5, 2, 12


class ExpertMixer(nn.Module):
    """``y = Σ_e sigmoid(gate(x))_e · W_e x / E`` over an expert stack ``w`` [E, D, D].

    Sigmoid scores, as Moonlight's router: a softmax gate's gradient has rows summing to zero, so
    it is rank-deficient, and Newton–Schulz multiplies the rounding noise in its null direction by
    a^5 ≈ 490 (jordan's slope at 0), which no implementation can keep below 1e-5.
    """

    muon_roles = {"w": "expert"}

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(D, EXPERTS, bias=False)
        self.w = nn.Parameter(torch.randn(EXPERTS, D, D) / D**0.5)

    def forward(self, x):
        g = torch.sigmoid(self.gate(x)) / EXPERTS
        return torch.einsum("bte,bteo->bto", g, torch.einsum("btd,eod->bteo", x, self.w))


class InOut(nn.Module):
    """``x @ weight`` with ``weight`` stored ``[in, out]`` (as Hugging Face's ``Conv1D``), its outputs
    declared as 5 fused projections."""

    muon_roles = {"weight": "hidden"}
    muon_layouts = {"weight": {"transposed": True, "fused": 5}}

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)

    def forward(self, x):
        return x @ self.weight


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.n_heads = HEADS  # per-head Muon reads the heads of wq, wk, wv (rows) and wo (columns) here
        self.attn_norm, self.mlp_norm, self.mix_norm = nn.RMSNorm(D), nn.RMSNorm(D), nn.RMSNorm(D)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(D, D, bias=False) for _ in range(4))
        self.w_up = InOut(D, FFN)
        self.w_down = nn.Linear(FFN, D, bias=False)
        self.mix = ExpertMixer()

    def forward(self, x):
        B, T, _ = x.shape
        h = self.attn_norm(x)
        q, k, v = (w(h).view(B, T, HEADS, D // HEADS).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        x = x + self.wo(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, D))
        x = x + self.w_down(F.gelu(self.w_up(self.mlp_norm(x))))
        return x + self.mix(self.mix_norm(x))


class HarnessModel(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, D)
        self.layers = nn.ModuleList(Block() for _ in range(2))
        self.norm = nn.RMSNorm(D)
        self.lm_head = nn.Linear(D, VOCAB, bias=False)

    def forward(self, x, y):
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        return F.cross_entropy(self.lm_head(self.norm(h)).flatten(0, 1), y.flatten())


def batch(step: int, global_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step``: sequences ``(s + k·t) mod VOCAB`` (random s, k ∈ 1..3), which a
    transformer learns quickly; next-token targets."""
    g = torch.Generator().manual_seed(1000 + step)
    start = torch.randint(0, VOCAB, (global_batch, 1), generator=g)
    stride = torch.randint(1, 4, (global_batch, 1), generator=g)
    x = (start + stride * torch.arange(SEQ + 1)) % VOCAB
    return x[:, :-1], x[:, 1:]


# A collective that waits longer than this fails the test instead of hanging it (gloo's default is
# 30 minutes): ranks that disagree on whether to step would otherwise wait on each other forever.
COLLECTIVE_TIMEOUT = timedelta(seconds=120)


# Ranks start from a fork server that imported torch once for the whole session: a fresh interpreter per
# rank re-imports it, 5-20 s a launch on a busy 2-core machine, against 0.1 s from the server. A forked
# rank starts from the server's state, not the test's: it takes the test's environment and folder here.
mp.set_forkserver_preload(["torch", "torch.distributed"])


def _entry(rank, world, out_dir, environ, cwd, fn, args):
    os.environ.clear()
    os.environ.update(environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.chdir(cwd)
    torch.set_num_threads(1)
    # the ranks meet in a file of this call's own folder, not on a TCP port picked beforehand (which
    # another process could take between the pick and the bind); gloo picks its own ports after that
    dist.init_process_group("gloo", init_method=f"file://{Path(out_dir) / 'store'}", rank=rank, world_size=world,
                            timeout=COLLECTIVE_TIMEOUT)
    try:
        result = fn(rank, world, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn(fn, world: int, *args) -> list:
    """Run ``fn(rank, world, *args)`` on ``world`` gloo processes; return each rank's result (torch-saveable)."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_entry, args=(world, out_dir, dict(os.environ), os.getcwd(), fn, args), nprocs=world,
                           join=True, start_method="forkserver")
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world)]


# ---- one training case, the same code on one process and on N


def full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter at its logical shape (FSDP2 DTensors gathered), detached copies."""
    return {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for n, p in model.named_parameters()
    }


def full_state(optimizer) -> dict[str, torch.Tensor]:
    """This rank's ``checkpoint_state`` at logical shapes (under ZeRO-1, the parameters this rank saves)."""
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in optimizer.checkpoint_state().items()}


def train_case(rank: int, world: int, mode: str, steps: int, per_rank: int, ns_dtype=torch.float32,
               start: int = 0, save_dir: str | None = None, save_at: int | None = None,
               load_dir: str | None = None, wrong: bool = False, muon_only: bool = False,
               options: dict | None = None, orthogonalize: str = "matrix") -> dict:
    """Train ``HarnessModel`` for ``steps`` steps (global batch ``world · per_rank``) under ``mode``.

    Returns the initial and final parameters, this rank's optimizer state and the loss per step
    (averaged over ranks). ``save_dir``/``save_at``: write a sharded checkpoint after step
    ``save_at``; ``load_dir``: start from a sharded checkpoint; ``wrong``: replace the FSDP
    owner-compute plan by Newton–Schulz on each local row shard (a deliberately wrong
    implementation that the equality checks must catch). ``muon_only``: optimize only the Muon
    groups (no AdamW elements to fill ZeRO-1 chunks, so chunk boundaries cut matrices).
    """
    from muonlab.optim import Muon, param_groups
    from muonlab.parallel import parallelize
    from muonlab.rundir.checkpoint import load_sharded_checkpoint, save_sharded_checkpoint

    if wrong:
        _use_local_shard_newton_schulz()
    model = HarnessModel(seed=0)
    forward = parallelize(model, mode)
    groups = [g for g in param_groups(model, split_fused=True, orthogonalize=orthogonalize)
              if g["algorithm"] == "muon" or not muon_only]
    optimizer = Muon(groups, lr=0.02, weight_decay=0.1, ns_dtype=ns_dtype, max_grad_norm=1.0, **(options or {}))
    if load_dir is not None:
        start = load_sharded_checkpoint(load_dir, model, optimizer, restore_rng=False)["step"]
    initial = full_params(model)
    losses = []
    for t in range(start, start + steps):
        x, y = batch(t, world * per_rank)
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        loss = forward(x[rows], y[rows])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        detached = loss.detach().double()
        if world > 1:
            dist.all_reduce(detached)
        losses.append(float(detached) / world)
        if save_dir is not None and t + 1 == save_at:
            save_sharded_checkpoint(save_dir, t + 1, model, optimizer, {})
    return {"initial": initial, "params": full_params(model), "state": full_state(optimizer), "losses": losses}


def _use_local_shard_newton_schulz() -> None:
    """Monkeypatch the sharded plan so each rank orthogonalizes only its own block (wrong on purpose)."""
    from muonlab.optim.distributed import shards
    from muonlab.optim.distributed.owners import Block

    exact = shards.sharded_units

    def local_units(mats, held, regions, world_size):
        own = [[p if isinstance(p, Block) else a for p, a in zip(ps, areas)] for ps, areas in zip(held, regions)]
        return exact(mats, held, own, world_size)

    shards.sharded_units = local_units


def run_plan(rank: int, world: int, plan: list[tuple[str, dict]]) -> dict[str, dict]:
    """Run several ``train_case`` s in one set of processes: ``{label: result}``. Cases with
    ``wrong=True`` patch the engine for the rest of the process, so they must come last."""
    return {label: train_case(rank, world, **kwargs) for label, kwargs in plan}
