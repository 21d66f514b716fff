"""``Muon``: one ``torch.optim.Optimizer`` holding Muon groups and AdamW groups.

The Muon update of a matrix parameter ``W`` of logical shape ``[A, B]`` (Moonlight,
arXiv 2502.16982, Eq. 1, footnote 1 and Eq. 4; Essential AI, arXiv 2505.02222 Eq. 1)::

    M ← μ M + G                                   # momentum as a plain sum, kept in fp32
    Õ = NS(G + μ M)   (Nesterov, default)   or   NS(M)
    W ← W − lr · (s(A, B) · Õ + λ · W)             # decay uses the *unscaled* lr

with ``s = 0.2·sqrt(max(A, B))`` under ``scale="moonlight"`` (0.2: ``update_rms``) so that the
update RMS is ≈ 0.2 like AdamW's, and AdamW's lr and weight decay carry over. Parameters the paper keeps on AdamW
(embeddings, LM head, norms, biases) live in ``algorithm="adamw"`` groups of the same optimizer
and follow decoupled-decay AdamW (Loshchilov & Hutter) exactly as ``torch.optim.AdamW`` does.

One step path: ``step()`` hands every step to an engine (:mod:`muonlab.optim.engines`), chosen
once from how the parameters are parallelized; on one process it is the replicated engine with
world size 1, where nothing is communicated. The engines chain the pure functions of
:mod:`muonlab.optim.update_rule` and :mod:`muonlab.optim.newton_schulz`. All Muon matrices with
the same logical shape and Newton–Schulz settings are orthogonalized in one batched call, across
groups; a 3-D parameter ``[E, A, B]`` contributes its ``E`` experts, each orthogonalized on its own.

Differences from ``torch.optim.Muon`` (intentional): the momentum buffer is the papers' sum
``μM + G`` where torch keeps the EMA ``μM + (1 − μ)G``; the two differ by the constant factor
``1 − μ``, which the Frobenius normalisation in Newton–Schulz removes, so updates agree to
rounding. ``eps`` is added to the norm (as here) in both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .. import hyperparameters as hp
from .engines import build_engine
from .gradients import NONFINITE_POLICIES, NonFiniteGradientError, NonFinitePolicy
from .qk_clip import QKClip
from .state import momentum_dtype
from .telemetry import UpdateTelemetry
from .validation import ALGORITHMS, as_dtype, check_group, check_loadable, check_number, check_step_numbers

__all__ = ["ALGORITHMS", "NONFINITE_POLICIES", "Muon", "NonFiniteGradientError"]

class Muon(torch.optim.Optimizer):
    """Muon with decoupled weight decay and AdamW-matched update RMS (Moonlight), plus AdamW.

    Args:
        params: parameter groups, each a dict with ``"params"`` and ``"algorithm"`` (``"muon"``
            or ``"adamw"``) — build them with :func:`muonlab.optim.param_groups` — or a plain
            iterable of tensors together with ``algorithm=...``. Any group may override any
            keyword below; groups may carry ``"names"`` (parameter names, same order as
            ``"params"``) for telemetry and error messages, ``"role"``, and the layout of their
            matrices: ``"transposed": True`` (stored ``[in, out]``, e.g. HF ``Conv1D``) and
            ``"blocks": n`` (each matrix's output rows are ``n`` fused projections, orthogonalized
            and scaled apart), see :mod:`muonlab.optim.routing`.
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
        update_rms: the target update RMS ``r`` of the rules that have one (``"moonlight"``:
            ``r·sqrt(max(A, B))``, ``"min_side"``: ``r·sqrt(min(A, B))``, ``"update_norm"``:
            ``r·O/RMS(O)``; Moonlight Table 8 sweeps it). The other rules reject any value but
            the default 0.2.
        adamw_betas, adamw_eps: AdamW's ``(β1, β2)`` and ``ε`` for ``algorithm="adamw"`` groups.
        nonfinite: ``"raise"`` (default) raises :class:`NonFiniteGradientError` before touching
            anything; ``"skip"`` leaves parameters and state untouched, counts the step in
            ``skipped_steps`` and returns. It covers gradients holding NaN/inf and finite ones so
            large that the update would not be finite (:mod:`muonlab.optim.gradients`).
        algorithm: default algorithm for groups that do not name one (``None``: they must).
        eps: added to the Frobenius norm before Newton–Schulz.
        max_grad_norm: clip the global L2 norm of the (reduced) gradient of all parameters to
            this before the step, as ``torch.nn.utils.clip_grad_norm_`` would (0: off). Inside the
            optimizer because under ZeRO-1 and FSDP only the optimizer sees the reduced gradient.
        tp_mode: for tensor-parallel matrices, ``"exact"`` (default: each matrix is assembled on
            one rank and orthogonalized whole — the paper's update) or ``"blockwise"``
            (Megatron-LM's cheaper approximation: each tensor-parallel shard is orthogonalized on
            its own, with no communication across the ``tp`` mesh dim; the update is then the
            polar factor of each block, not of the matrix, so it differs from one process's —
            e.g. a column-wise q projection gets an orthogonal update per group of heads; the
            scale ``s`` still uses the whole matrix's shape). Matters only for DTensors sharded
            on a mesh dim named ``tp``.
        normuon: NorMuon (Li et al., arXiv 2510.05491): after Newton–Schulz, each row of each
            orthogonalized block is divided by the root of its running second moment ``v``
            (``normuon_beta2``, ``normuon_eps``), and the block rescaled to an orthogonal matrix's
            Frobenius norm, so the scale rule keeps the update RMS (``update_rule.normuon_``). State:
            ``normuon_v``, one fp32 value per row per matrix. The momentum stays muonlab's
            (``μM + G``, Nesterov by default): Newton–Schulz removes the paper's ``1 − β₁``.
        cautious_wd: cautious weight decay (Chen et al., arXiv 2510.12402): decay only the
            coordinates where the update and the weight have the same sign,
            ``W ← W − lr·(U + λ·𝟙(U⊙W ≥ 0)⊙W)``; for Muon and AdamW groups alike.
        compile: with ``cautious_wd``, apply a Muon matrix's cautious decay and update in one element-wise
            pass, and with ``normuon``, normalize its rows in one reduction and one multiplication, that
            ``torch.compile`` fuses (:mod:`muonlab.optim.fused`; compiled on the first step, eager where
            compiling fails). ``False`` keeps every step eager. Plain Moonlight Muon is eager always.

    A Muon group may also say how its matrices are cut into blocks that are orthogonalized, normalized
    and scaled each on its own (per-head Muon; :mod:`muonlab.optim.blocks`): ``"blocks"`` (row blocks of
    the logical ``[out, in]`` matrix: ``n`` equal ones, or a list of sizes) and ``"col_blocks"``;
    ``param_groups(model, orthogonalize="per_head")`` sets them from the model's heads.

    Distributed training needs no other code: the parameters say how they are parallelized
    (FSDP2 DTensors, or replicated parameters marked by ``muonlab.parallel.parallelize``) and
    its engine runs the same update on N processes — Newton–Schulz once
    per matrix, optimizer state sharded under ZeRO-1 and FSDP2. Checkpoint those with
    ``checkpoint_state``/``load_checkpoint_state`` (torch.distributed.checkpoint, any world size).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = hp.MOMENTUM,
        nesterov: bool = hp.NESTEROV,
        ns_steps: int = hp.NS_STEPS,
        ns_coefficients: str = hp.NS_COEFFICIENTS,
        ns_dtype: torch.dtype | str = hp.NS_DTYPE,
        ns_method: str = "auto",
        scale: str = hp.SCALE,
        update_rms: float = hp.DEFAULT_UPDATE_RMS,
        adamw_betas: tuple[float, float] = hp.ADAMW_BETAS,
        adamw_eps: float = hp.ADAMW_EPS,
        nonfinite: str = "raise",
        algorithm: str | None = None,
        eps: float = 1e-7,
        max_grad_norm: float = 0.0,
        qk_clip: QKClip | None = None,
        tp_mode: str = "exact",
        normuon: bool = False,
        normuon_beta2: float = hp.NORMUON_BETA2,
        normuon_eps: float = 1e-8,
        cautious_wd: bool = False,
        compile: bool = True,
    ) -> None:
        policy = NonFinitePolicy(nonfinite)
        if not isinstance(compile, bool):
            raise ValueError(f"Muon's compile must be True or False, got {compile!r}")
        self.compile = compile
        check_number("Muon", "max_grad_norm (0 disables clipping)", max_grad_norm, 0.0)
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            ns_coefficients=ns_coefficients,
            ns_dtype=as_dtype(ns_dtype),
            ns_method=ns_method,
            scale=scale,
            update_rms=update_rms,
            betas=tuple(adamw_betas),
            eps=adamw_eps,
            ns_eps=eps,
            algorithm=algorithm,
            tp_mode=tp_mode,
            normuon=normuon,
            normuon_beta2=normuon_beta2,
            normuon_eps=normuon_eps,
            cautious_wd=cautious_wd,
        )
        self._policy = policy
        self.max_grad_norm = float(max_grad_norm)
        if qk_clip is not None and not callable(getattr(qk_clip, "apply", None)):
            raise ValueError(f"qk_clip must be a muonlab.optim.QKClip (or None), got {type(qk_clip).__name__}")
        self.qk_clip = qk_clip
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
        self._engine = build_engine(self, self._policy)

    @property
    def nonfinite(self) -> str:
        """The non-finite gradient policy, ``"raise"`` or ``"skip"``."""
        return self._policy.policy

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because a gradient held NaN or inf (``nonfinite="skip"``)."""
        return self._policy.skipped_steps

    # ------------------------------------------------------------------ validation

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking its algorithm and options (see the class docstring)."""
        if self._engine is not None and self._engine.process_group is not None:
            raise ValueError("a distributed Muon's parameter groups are fixed at construction (they define how "
                             "state is partitioned across ranks); pass every group to Muon(...)")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        index = len(self.param_groups) - 1
        try:
            check_group(group, index)
        except ValueError:
            self.param_groups.pop()  # a refused group leaves the optimizer as it was
            raise

    def _current_engine(self):
        """The engine for the current parameter groups (rebuilt on one process after add_param_group)."""
        if len(self._engine.slots) != sum(p.numel() > 0 for g in self.param_groups for p in g["params"]):
            self._engine = build_engine(self, self._policy)
        return self._engine

    # ------------------------------------------------------------------ telemetry

    def measure_next_step(self) -> None:
        """Collect telemetry during the next ``step()`` into ``last_telemetry``.

        Keys: ``update_rms/muon`` and ``update_rms/adamw`` (mean RMS of the lr-free update
        ``s·Õ`` resp. ``m̂/(sqrt(v̂)+ε)`` over parameters), ``update_rms/<name>`` per named
        parameter, ``ns_orthogonality_residual`` (``‖ÕÕᵀ − I‖_F / sqrt(m)`` on the unscaled
        Newton–Schulz output of one matrix per shape), and ``update_spectral_norm/max`` (largest
        spectral norm of ``s·Õ`` on those samples). With the refinements: ``update_rms_block/min`` and
        ``/max`` (each block's update RMS), ``normuon/row_norm_cv/before`` and ``/after`` (spread of the
        row norms around NorMuon) and ``cautious/decayed_fraction/muon`` and ``/adamw``
        (:mod:`muonlab.optim.telemetry`). Measurement costs a few reductions and one
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
        for index, group in enumerate(self.param_groups):
            check_step_numbers(group, index)  # a scheduler or a hand edit may have changed them since
        measure, self._measure = self._measure, False
        telemetry = UpdateTelemetry() if measure else None
        self._current_engine().step(telemetry)
        if telemetry is not None:
            self.last_telemetry = telemetry.result()
        if self.qk_clip is not None:
            self.qk_clip.apply()  # after every rank's weights are updated (qk_clip module docstring)
        return loss

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """The torch state dict plus ``skipped_steps`` (all tensors, numbers and strings)."""
        if self._engine.partitioned_state:
            raise ValueError("a ZeRO-1 Muon's state is partitioned across ranks; save it with "
                             "muonlab.rundir.checkpoint's save_checkpoint (sharded, through checkpoint_state), "
                             "which any world size can load")
        sd = super().state_dict()
        for group in sd["param_groups"]:
            group["ns_dtype"] = str(group["ns_dtype"]).removeprefix("torch.")
        sd["skipped_steps"] = self._policy.skipped_steps
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state dict from :meth:`state_dict` (loadable with ``weights_only=True``)."""
        if self._engine.partitioned_state:
            raise ValueError("a ZeRO-1 Muon's state is partitioned across ranks; load it with "
                             "muonlab.rundir.checkpoint's load_checkpoint (sharded, through load_checkpoint_state)")
        state_dict = dict(state_dict)
        check_loadable(state_dict, self.param_groups)  # before anything changes
        self._policy.skipped_steps = int(state_dict.pop("skipped_steps", 0))
        # torch casts floating state to each parameter's dtype; momentum and NorMuon's row state must
        # stay fp32 (or wider) for low-precision parameters, so keep the saved buffers and restore them after.
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        kept = {i: {f: s[f] for f in ("momentum_buffer", "normuon_v") if f in s}
                for i, s in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params):
            for field, value in kept.get(saved_id, {}).items():
                dtype = momentum_dtype(p.dtype) if field == "momentum_buffer" else torch.float32
                self.state[p][field] = value.to(device=p.device, dtype=dtype)
        for group in self.param_groups:
            group["ns_dtype"] = as_dtype(group["ns_dtype"])
            group.setdefault("update_rms", self.defaults["update_rms"])  # a state dict from before update_rms

    # ------------------------------------------------------------------ sharded checkpoints

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """This rank's optimizer state for torch.distributed.checkpoint, ``{"<param name>/<field>": tensor}``.

        Tensors have the parameter's logical shape: plain (one process, DDP; identical on every
        rank), DTensors (FSDP2), or, under ZeRO-1, whole tensors assembled on one rank per
        parameter (a collective). Fields: ``momentum_buffer`` and, with NorMuon, ``normuon_v`` (Muon;
        a plain tensor ``[matrices, column blocks · out]``, equal on every rank); ``exp_avg``, ``exp_avg_sq``,
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
        return {"param_groups": groups, "skipped_steps": self._policy.skipped_steps}

    def load_checkpoint_metadata(self, metadata: dict[str, Any]) -> None:
        """Restore :meth:`checkpoint_metadata`; raises ``ValueError`` if the groups do not match."""
        saved = metadata["param_groups"]
        if len(saved) != len(self.param_groups):
            raise ValueError(f"the checkpoint has {len(saved)} parameter groups, "
                             f"this optimizer {len(self.param_groups)}")
        for index, (entry, group) in enumerate(zip(saved, self.param_groups)):
            if entry["size"] != len(group["params"]) or entry.get("names") != group.get("names"):
                raise ValueError(f"parameter group {index} holds {entry.get('names') or entry['size']} "
                                 "in the checkpoint "
                                 f"but {group.get('names') or len(group['params'])} here")
        for entry, group in zip(saved, self.param_groups):
            for key, value in entry.items():
                if key in ("size", "names") or (key == "ns_coefficients" and not isinstance(group[key], str)):
                    continue
                group[key] = as_dtype(value) if key == "ns_dtype" else tuple(value) if key == "betas" else value
        self._policy.skipped_steps = int(metadata.get("skipped_steps", 0))

    def state_bytes(self) -> int:
        """Bytes of optimizer state this rank holds (1/N of the total under ZeRO-1 and FSDP2)."""
        return self._current_engine().state_bytes()
