"""``Muon``: one ``torch.optim.Optimizer`` holding Muon groups and AdamW groups.

The Muon update of a matrix parameter ``W`` of logical shape ``[A, B]`` (Moonlight,
arXiv 2502.16982, Eq. 1, footnote 1 and Eq. 4; Essential AI, arXiv 2505.02222 Eq. 1)::

    M ← μ M + G                                   # momentum as a plain sum, kept in fp32
    Õ = NS(G + μ M)   (Nesterov, default)   or   NS(M)
    W ← W − lr · (s(A, B) · Õ + λ · W)             # decay uses the *unscaled* lr

with ``s = 0.2·sqrt(max(A, B))`` under ``scale="moonlight"`` so that the update RMS is ≈ 0.2
like AdamW's, and AdamW's lr and weight decay carry over. Parameters the paper keeps on AdamW
(embeddings, LM head, norms, biases) live in ``algorithm="adamw"`` groups of the same optimizer
and follow decoupled-decay AdamW (Loshchilov & Hutter) exactly as ``torch.optim.AdamW`` does.

Batching: all Muon matrices with the same (wide-oriented) shape and the same Newton–Schulz
settings are stacked and orthogonalized in one batched call, across groups; a 3-D parameter
``[E, A, B]`` contributes its ``E`` experts to the batch, each orthogonalized on its own.

Differences from ``torch.optim.Muon`` (intentional): the momentum buffer is the papers' sum
``μM + G`` where torch keeps the EMA ``μM + (1 − μ)G``; the two differ by the constant factor
``1 − μ``, which the Frobenius normalisation in Newton–Schulz removes, so updates agree to
rounding. ``eps`` is added to the norm (as here) in both.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch

from .distributed import build_engine
from .distributed.engines import Zero1Engine
from .functional import adamw_
from .newton_schulz import NS_METHODS, get_coefficient_set, orthogonalize
from .scaling import SCALE_RULES, logical_matrix_shape
from .telemetry import UpdateTelemetry

__all__ = ["ALGORITHMS", "NONFINITE_POLICIES", "Muon", "NonFiniteGradientError"]

ALGORITHMS = ("muon", "adamw")
NONFINITE_POLICIES = ("raise", "skip")
_NS_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


class NonFiniteGradientError(FloatingPointError):
    """A gradient contained NaN or inf; no parameter or optimizer state was changed."""


def _matrix_shape(group: dict[str, Any], p: torch.Tensor) -> tuple[int, int]:
    # A 3-D parameter is an expert stack unless its group is routed as a plain "hidden" weight
    # (a Conv1d weight [out, in, k]); see logical_matrix_shape.
    return logical_matrix_shape(tuple(p.shape), stacked=group.get("role") != "hidden")


def _momentum_dtype(p: torch.Tensor) -> torch.dtype:
    return torch.promote_types(p.dtype, torch.float32)


def _as_dtype(value) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    try:
        return _NS_DTYPES[str(value).removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown ns_dtype {value!r}; valid: {sorted(_NS_DTYPES)}") from None


class Muon(torch.optim.Optimizer):
    """Muon with decoupled weight decay and AdamW-matched update RMS (Moonlight), plus AdamW.

    Args:
        params: parameter groups, each a dict with ``"params"`` and ``"algorithm"`` (``"muon"``
            or ``"adamw"``) — build them with :func:`muonlab.optim.param_groups` — or a plain
            iterable of tensors together with ``algorithm=...``. Any group may override any
            keyword below; groups may carry ``"names"`` (parameter names, same order as
            ``"params"``) for telemetry and error messages, and ``"role"``.
        lr: learning rate, shared by both algorithms (Moonlight reuses AdamW's).
        weight_decay: decoupled decay ``λ``; applied as ``W ← W − lr·λ·W``.
        momentum: Muon's ``μ`` (0.95 in both papers).
        nesterov: feed ``G + μM`` (not ``M``) to Newton–Schulz.
        ns_steps: Newton–Schulz iterations.
        ns_coefficients: ``"jordan"``, ``"polar_express"`` or a ``CoefficientSet``.
        ns_dtype: Newton–Schulz compute dtype (bf16 by default, as both papers).
        ns_method: ``"auto"`` (fewest FLOPs), ``"standard"``, ``"gram"``, or ``"svd"`` (exact
            polar factor; slow).
        scale: update-scale rule, see :mod:`muonlab.optim.scaling`.
        adamw_betas, adamw_eps: AdamW's ``(β1, β2)`` and ``ε`` for ``algorithm="adamw"`` groups.
        nonfinite: ``"raise"`` (default) raises :class:`NonFiniteGradientError` before touching
            anything; ``"skip"`` leaves parameters and state untouched, counts the step in
            ``skipped_steps`` and returns.
        algorithm: default algorithm for groups that do not name one (``None``: they must).
        eps: added to the Frobenius norm before Newton–Schulz.
        max_grad_norm: clip the global L2 norm of the (reduced) gradient of all parameters to
            this before the step, as ``torch.nn.utils.clip_grad_norm_`` would (0: off). Inside the
            optimizer because under ZeRO-1 and FSDP only the optimizer sees the reduced gradient.

    Distributed training needs no other code: the parameters say how they are parallelized
    (FSDP2 DTensors, or replicated parameters marked by ``muonlab.parallel.parallelize``) and
    :mod:`muonlab.optim.distributed` runs the same update on N processes — Newton–Schulz once
    per matrix, optimizer state sharded under ZeRO-1 and FSDP2. Checkpoint those with
    ``checkpoint_state``/``load_checkpoint_state`` (torch.distributed.checkpoint, any world size).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coefficients: str = "jordan",
        ns_dtype: torch.dtype | str = torch.bfloat16,
        ns_method: str = "auto",
        scale: str = "moonlight",
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        nonfinite: str = "raise",
        algorithm: str | None = None,
        eps: float = 1e-7,
        max_grad_norm: float = 0.0,
    ) -> None:
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"unknown nonfinite policy {nonfinite!r}; valid: {list(NONFINITE_POLICIES)}")
        if not max_grad_norm >= 0.0:
            raise ValueError(f"max_grad_norm must be >= 0 (0 disables clipping), got {max_grad_norm}")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            ns_coefficients=ns_coefficients,
            ns_dtype=_as_dtype(ns_dtype),
            ns_method=ns_method,
            scale=scale,
            betas=tuple(adamw_betas),
            eps=adamw_eps,
            ns_eps=eps,
            algorithm=algorithm,
        )
        self.nonfinite = nonfinite
        self.max_grad_norm = float(max_grad_norm)
        self.skipped_steps = 0
        self._measure = False
        self.last_telemetry: dict[str, float] = {}
        self._engine = None
        try:
            super().__init__(params, defaults)
        except ValueError as err:
            if "more than one parameter group" in str(err):
                raise ValueError(
                    "a parameter appears in two parameter groups; each parameter must be routed "
                    "exactly once (muonlab.optim.param_groups does this for a model)"
                ) from None
            raise
        self._engine = build_engine(self)

    # ------------------------------------------------------------------ validation

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking its algorithm and options (see the class docstring)."""
        if self._engine is not None and self._engine.group is not None:
            raise ValueError("a distributed Muon's parameter groups are fixed at construction (they define how "
                             "state is partitioned across ranks); pass every group to Muon(...)")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        index = len(self.param_groups) - 1
        algorithm = group["algorithm"]
        if algorithm not in ALGORITHMS:
            hint = "" if algorithm is not None else " (pass algorithm=... or use muonlab.optim.param_groups(model))"
            raise ValueError(
                f"parameter group {index} has algorithm {algorithm!r}; valid: {list(ALGORITHMS)}{hint}"
            )
        names = group.get("names")
        if names is not None and len(names) != len(group["params"]):
            raise ValueError(f"parameter group {index} has {len(names)} names for {len(group['params'])} params")
        if not 0.0 <= group["lr"]:
            raise ValueError(f"parameter group {index}: lr must be >= 0, got {group['lr']}")
        if not 0.0 <= group["weight_decay"]:
            raise ValueError(f"parameter group {index}: weight_decay must be >= 0, got {group['weight_decay']}")
        if algorithm == "adamw":
            b1, b2 = group["betas"]
            if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
                raise ValueError(f"parameter group {index}: AdamW betas must lie in [0, 1), got {group['betas']}")
            return
        group["ns_dtype"] = _as_dtype(group["ns_dtype"])
        if group["scale"] not in SCALE_RULES:
            raise ValueError(f"parameter group {index}: unknown scale rule {group['scale']!r}; valid: {sorted(SCALE_RULES)}")
        if group["ns_method"] not in NS_METHODS:
            raise ValueError(f"parameter group {index}: unknown ns_method {group['ns_method']!r}; valid: {list(NS_METHODS)}")
        cset = get_coefficient_set(group["ns_coefficients"])
        if group["ns_method"] != "svd" and group["ns_dtype"] not in cset.safe_dtypes:
            raise ValueError(
                f"parameter group {index}: coefficient set {cset.name!r} is not numerically safe in "
                f"{group['ns_dtype']}; use one of {[str(d) for d in cset.safe_dtypes]}"
            )
        cset.schedule(group["ns_steps"])
        if not 0.0 <= group["momentum"] < 1.0:
            raise ValueError(f"parameter group {index}: momentum must lie in [0, 1), got {group['momentum']}")
        for i, p in enumerate(group["params"]):
            if p.ndim < 2:
                raise ValueError(
                    f"parameter {self._name(group, i)} of shape {tuple(p.shape)} is in a Muon group, but "
                    "Muon updates matrices only (2-D, 3-D expert stacks, or conv weights); route "
                    "1-D parameters (norms, biases) to an 'adamw' group"
                )
            if p.is_complex():
                raise ValueError(f"parameter {self._name(group, i)} is complex; Muon supports real parameters only")

    @staticmethod
    def _name(group: dict[str, Any], i: int) -> str:
        names = group.get("names")
        return repr(names[i]) if names else f"#{i} of shape {tuple(group['params'][i].shape)}"

    def _check_gradients(self) -> bool:
        """Validate every gradient before any state changes; True if the step may proceed."""
        grads, where = [], []
        for group in self.param_groups:
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"parameter {self._name(group, i)} has a sparse gradient; Muon and AdamW here need dense gradients")
                if p.grad.is_complex():
                    raise RuntimeError(f"parameter {self._name(group, i)} has a complex gradient; only real gradients are supported")
                grads.append(p.grad)
                where.append((group, i))
        if not grads:
            return False
        # Fast path: one sum per tensor and one sync; a sum is finite when every entry is (it can
        # overflow for huge finite entries, so a non-finite sum is re-checked entry by entry).
        sums = torch.stack([g.sum(dtype=torch.float64) if g.dtype == torch.float64 else g.float().sum() for g in grads])
        if bool(torch.isfinite(sums).all()):
            return True
        finite = torch.stack([torch.isfinite(g).all() for g in grads])
        if bool(finite.all()):
            return True
        if self.nonfinite == "skip":
            self.skipped_steps += 1
            return False
        group, i = where[int((~finite).nonzero()[0])]
        raise self.nonfinite_error(group, i)

    def nonfinite_error(self, group: dict[str, Any], i: int) -> NonFiniteGradientError:
        """The error for a NaN/inf gradient of parameter ``i`` of ``group``."""
        return NonFiniteGradientError(
            f"gradient of parameter {self._name(group, i)} contains NaN or inf; no parameter or "
            "optimizer state was changed (pass nonfinite='skip' to skip such steps instead)"
        )

    def _current_engine(self):
        """The engine for the current parameter groups (rebuilt on one process after add_param_group)."""
        if len(self._engine.entries) != sum(len(g["params"]) for g in self.param_groups):
            self._engine = build_engine(self)
        return self._engine

    # ------------------------------------------------------------------ telemetry

    def measure_next_step(self) -> None:
        """Collect telemetry during the next ``step()`` into ``last_telemetry``.

        Keys: ``update_rms/muon`` and ``update_rms/adamw`` (mean RMS of the lr-free update
        ``s·Õ`` resp. ``m̂/(sqrt(v̂)+ε)`` over parameters), ``update_rms/<name>`` per named
        parameter, ``ns_orthogonality_residual`` (``‖ÕÕᵀ − I‖_F / sqrt(m)`` on the unscaled
        Newton–Schulz output of one matrix per shape), and ``update_spectral_norm/max`` (largest
        spectral norm of ``s·Õ`` on those samples). Measurement costs a few reductions and one
        small SVD per shape, so it is off unless requested.
        """
        self._measure = True

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step (Muon groups and AdamW groups)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        measure, self._measure = self._measure, False
        engine = self._current_engine()
        if engine.group is not None:  # several processes: see muonlab.optim.distributed
            record = UpdateTelemetry() if measure else None
            engine.step(record)
            if measure:
                self.last_telemetry = record.result()
            return loss
        telemetry: dict[str, list[float]] = defaultdict(list)
        if self._check_gradients():
            if self.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_([p for g in self.param_groups for p in g["params"] if p.grad is not None],
                                               self.max_grad_norm)
            self._muon_step(telemetry if measure else None)
            self._adamw_step(telemetry if measure else None)
        if measure:
            self.last_telemetry = {k: sum(v) / len(v) if not k.startswith("update_spectral_norm") else max(v)
                                   for k, v in telemetry.items()}
        return loss

    def _muon_step(self, telemetry: dict[str, list[float]] | None) -> None:
        # Bucket key: everything that makes two matrices' Newton–Schulz calls identical.
        buckets: dict[tuple, list[tuple[dict, int, torch.Tensor, torch.Tensor]]] = defaultdict(list)
        for group in self.param_groups:
            if group["algorithm"] != "muon":
                continue
            indices = [i for i, p in enumerate(group["params"]) if p.grad is not None]
            if not indices:
                continue
            params = [group["params"][i] for i in indices]
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, dtype=_momentum_dtype(p), memory_format=torch.contiguous_format)
                bufs.append(state["momentum_buffer"])
            grads = [p.grad if p.grad.dtype == b.dtype else p.grad.to(b.dtype) for p, b in zip(params, bufs)]
            for g, buf in zip(grads, bufs):  # M ← G + μM in one pass over M
                torch.add(g, buf, alpha=group["momentum"], out=buf)
            key_settings = (group["ns_steps"], str(group["ns_coefficients"]), group["ns_dtype"], group["ns_method"], group["ns_eps"])
            for i, p, g, buf in zip(indices, params, grads, bufs):
                rows, cols = _matrix_shape(group, p)
                key = (rows, cols, p.device) + key_settings
                buckets[key].append((group, i, g, buf))
        for key, items in buckets.items():
            self._orthogonalize_and_apply(key, items, telemetry)

    def _orthogonalize_and_apply(self, key, items, telemetry) -> None:
        rows, cols, device, steps, coefficients, dtype, method, eps = key
        # One [N, rows, cols] stack of every logical matrix in the bucket. The Newton–Schulz input
        # G + μM (Nesterov) or M is written straight into it, cast to the NS dtype in the same
        # pass (the exact SVD keeps the momentum's precision).
        counts = [buf.numel() // (rows * cols) for _, _, _, buf in items]
        stack_dtype = dtype if method != "svd" else items[0][3].dtype
        stacked = torch.empty(sum(counts), rows, cols, dtype=stack_dtype, device=device)
        offset = 0
        for (group, i, g, buf), count in zip(items, counts):
            dst = stacked[offset : offset + count]
            if group["nesterov"]:
                torch.add(g.reshape(count, rows, cols), buf.view(count, rows, cols), alpha=group["momentum"], out=dst)
            else:
                dst.copy_(buf.view(count, rows, cols))
            offset += count
        ortho = orthogonalize(stacked, items[0][0]["ns_coefficients"], steps, dtype, eps, method)
        offset = 0
        for position, ((group, i, _, _), count) in enumerate(zip(items, counts)):
            p = group["params"][i]
            O = ortho[offset : offset + count]  # [count, rows, cols]
            offset += count
            s = SCALE_RULES[group["scale"]](rows, cols)
            lr, wd = group["lr"], group["weight_decay"]
            target = p.view(count, rows, cols) if p.is_contiguous() else p.detach().reshape(count, rows, cols)
            if wd != 0.0:
                target.mul_(1.0 - lr * wd)
            target.add_(O, alpha=-lr * s)
            if target.data_ptr() != p.data_ptr():  # a non-contiguous parameter was updated in a copy
                p.copy_(target.view(p.shape))
            if telemetry is not None:
                self._record_muon(telemetry, group, i, O, s, sample_orthogonality=position == 0)

    def _record_muon(self, telemetry, group, i, O, s, sample_orthogonality: bool) -> None:
        rms = s * float(O.float().pow(2).mean().sqrt())
        telemetry["update_rms/muon"].append(rms)
        if group.get("names"):
            telemetry[f"update_rms/{group['names'][i]}"].append(rms)
        if sample_orthogonality:
            rows, cols = _matrix_shape(group, group["params"][i])
            sample = O.reshape(-1, rows, cols)[0].double()
            if rows > cols:
                sample = sample.T
            eye = torch.eye(sample.shape[0], dtype=sample.dtype, device=sample.device)
            residual = torch.linalg.matrix_norm(sample @ sample.T - eye) / math.sqrt(sample.shape[0])
            telemetry["ns_orthogonality_residual"].append(float(residual))
            telemetry["update_spectral_norm/max"].append(s * float(torch.linalg.matrix_norm(sample, ord=2)))

    def _adamw_step(self, telemetry: dict[str, list[float]] | None) -> None:
        for group in self.param_groups:
            if group["algorithm"] != "adamw":
                continue
            indices = [i for i, p in enumerate(group["params"]) if p.grad is not None]
            if not indices:
                continue
            params = [group["params"][i] for i in indices]
            b1, b2 = group["betas"]
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            exp_avgs, exp_avg_sqs, steps = [], [], []
            for p in params:
                state = self.state[p]
                if "exp_avg" not in state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            updates = adamw_(params, [p.grad for p in params], exp_avgs, exp_avg_sqs, steps, beta1=b1, beta2=b2,
                             lr=lr, weight_decay=wd, eps=eps, want_updates=telemetry is not None)
            if telemetry is not None:
                for i, u in zip(indices, updates):
                    rms = float(u.float().pow(2).mean().sqrt())
                    telemetry["update_rms/adamw"].append(rms)
                    if group.get("names"):
                        telemetry[f"update_rms/{group['names'][i]}"].append(rms)

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """The torch state dict plus ``skipped_steps`` (all tensors, numbers and strings)."""
        if isinstance(self._engine, Zero1Engine):
            raise ValueError("a ZeRO-1 Muon's state is partitioned across ranks; save it with "
                             "muonlab.rundir.checkpoint's save_checkpoint (sharded, through checkpoint_state), "
                             "which any world size can load")
        sd = super().state_dict()
        for group in sd["param_groups"]:
            group["ns_dtype"] = str(group["ns_dtype"]).removeprefix("torch.")
        sd["skipped_steps"] = self.skipped_steps
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state dict from :meth:`state_dict` (loadable with ``weights_only=True``)."""
        if isinstance(self._engine, Zero1Engine):
            raise ValueError("a ZeRO-1 Muon's state is partitioned across ranks; load it with "
                             "muonlab.rundir.checkpoint's load_checkpoint (sharded, through load_checkpoint_state)")
        state_dict = dict(state_dict)
        self.skipped_steps = int(state_dict.pop("skipped_steps", 0))
        # torch casts floating state to each parameter's dtype; momentum must stay fp32 (or
        # wider) for low-precision parameters, so keep the saved buffers and restore them after.
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        momenta = {i: s["momentum_buffer"] for i, s in state_dict["state"].items() if "momentum_buffer" in s}
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params):
            if saved_id in momenta:
                self.state[p]["momentum_buffer"] = momenta[saved_id].to(device=p.device, dtype=_momentum_dtype(p))
        for group in self.param_groups:
            group["ns_dtype"] = _as_dtype(group["ns_dtype"])

    # ------------------------------------------------------------------ sharded checkpoints

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """This rank's optimizer state for torch.distributed.checkpoint, ``{"<param name>/<field>": tensor}``.

        Tensors have the parameter's logical shape: plain (one process, DDP; identical on every
        rank), DTensors (FSDP2), or, under ZeRO-1, whole tensors assembled on one rank per
        parameter (a collective). Fields: ``momentum_buffer`` (Muon); ``exp_avg``, ``exp_avg_sq``,
        ``step`` (AdamW). Group hyperparameters are in :meth:`checkpoint_metadata`.
        """
        return self._current_engine().checkpoint_state()

    def load_checkpoint_state(self, available: set[str], read) -> None:
        """Restore :meth:`checkpoint_state` at any world size: ``read(template)`` must fill the
        tensors of ``template`` (keys among ``available``) in place, e.g. with ``dcp.load``."""
        self._current_engine().load_checkpoint_state(available, read)

    def checkpoint_metadata(self) -> dict[str, Any]:
        """JSON-serializable group hyperparameters, parameter names and ``skipped_steps``."""
        groups = []
        for group in self.param_groups:
            entry = {}
            for key, value in group.items():
                if key == "params":
                    continue
                if isinstance(value, torch.dtype):
                    value = str(value).removeprefix("torch.")
                elif isinstance(value, tuple):
                    value = list(value)
                elif not isinstance(value, (int, float, str, bool, list, type(None))):
                    value = str(value)
                entry[key] = value
            entry["size"] = len(group["params"])
            groups.append(entry)
        return {"param_groups": groups, "skipped_steps": self.skipped_steps}

    def load_checkpoint_metadata(self, metadata: dict[str, Any]) -> None:
        """Restore :meth:`checkpoint_metadata`; raises ``ValueError`` if the groups do not match."""
        saved = metadata["param_groups"]
        if len(saved) != len(self.param_groups):
            raise ValueError(f"the checkpoint has {len(saved)} parameter groups, this optimizer {len(self.param_groups)}")
        for index, (entry, group) in enumerate(zip(saved, self.param_groups)):
            if entry["size"] != len(group["params"]) or entry.get("names") != group.get("names"):
                raise ValueError(f"parameter group {index} holds {entry.get('names') or entry['size']} in the checkpoint "
                                 f"but {group.get('names') or len(group['params'])} here")
        for entry, group in zip(saved, self.param_groups):
            for key, value in entry.items():
                if key in ("size", "names") or (key == "ns_coefficients" and not isinstance(group[key], str)):
                    continue
                group[key] = _as_dtype(value) if key == "ns_dtype" else tuple(value) if key == "betas" else value
        self.skipped_steps = int(metadata.get("skipped_steps", 0))

    def state_bytes(self) -> int:
        """Bytes of optimizer state this rank holds (1/N of the total under ZeRO-1 and FSDP2)."""
        return self._current_engine().state_bytes()
