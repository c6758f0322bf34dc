"""The two phases of patch-level training, planned under a budget and run with the one loop.

docs/fixed-k.md (arXiv 2407.12665): a fraction λ of the training bytes goes through the patch phase (K bytes a
position, rows of K*T bytes), the rest through next-byte training (rows of T bytes). At the
transition only the weights are kept: each phase is one ``bltkit.training.loop.train`` call, so
the optimiser state and the LR schedule (warmup included) restart by construction, and the second
phase starts from the first one's bundle (``task.init_from``). Relative compute is
``λ/K + (1 - λ)`` of byte-level training on the same bytes.

Budgets (``Budget``): ``bytes`` gives each phase its share of the training bytes; ``flops`` first
finds the byte count D whose phases cost the budget, ``D = F / sum_i(f_i * share_i / b_i)``, with
``f_i`` / ``b_i`` the training FLOPs / target bytes of one step of phase i, measured on the run's
own first batches (so BLT variants, whose cost follows their patches, plan the same way). A model
that chooses its own boundaries (the ``hnet`` kind, a BLT with ``patcher: {scheme: learned}``) is
planned at its target compression (``Task.planning_flops_per_batch``); its logged FLOPs then follow
the compression it achieves. Step counts are rounded to whole steps; a phase that would get no
step is an error naming the budget.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from .. import config as cfgio
from ..training.config import OptimConfig, ScheduleConfig, TrainConfig

@dataclass
class Budget:
    """A training budget: ``bytes`` (training target bytes) or ``flops`` (training FLOPs, 3 x forward)."""

    kind: Literal["bytes", "flops"] = "flops"
    value: float = 1e12

    def validate(self) -> None:
        if not self.value > 0:
            raise ValueError(f"budget.value must be > 0, got {self.value}")


@dataclass
class PhaseSettings:
    """Optimiser and schedule of one phase; unset = the run's own."""

    optim: Optional[OptimConfig] = None
    schedule: Optional[ScheduleConfig] = None


@dataclass
class PatchTrainConfig:
    """K, λ and both phases' optimiser settings (defaults: K=4, λ=2/3, the paper's recommendation)."""

    patch_size: int = 4  # K
    patch_fraction: float = 2 / 3  # λ: share of the training bytes that go through the patch phase
    patch_phase: PhaseSettings = field(default_factory=PhaseSettings)
    byte_phase: PhaseSettings = field(default_factory=PhaseSettings)

    def validate(self) -> None:
        check_k_lambda(self.patch_size, self.patch_fraction)


def check_k_lambda(patch_size: Any, patch_fraction: Any) -> None:
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size K must be an integer >= 1, got {patch_size!r}")
    if not isinstance(patch_fraction, (int, float)) or not 0.0 <= float(patch_fraction) <= 1.0:
        raise ValueError(f"patch_fraction λ must be in [0, 1], got {patch_fraction!r}")


def relative_cost(patch_size: int, patch_fraction: float) -> float:
    """λ/K + (1 - λ): compute of a K, λ run over that of byte-level training on the same bytes."""
    check_k_lambda(patch_size, patch_fraction)
    return patch_fraction / patch_size + (1.0 - patch_fraction)


@dataclass
class Phase:
    """One loop call: its name, run config, share of the bytes and (once planned) its steps."""

    name: str
    config: TrainConfig
    share: float = 1.0
    steps: int = 0
    flops_per_step: float = 0.0
    bytes_per_step: float = 0.0


def patch_train_phases(base: TrainConfig, pt: PatchTrainConfig) -> list[Phase]:
    """The phases of a ``bytelm`` run with K, λ (a phase with no share is left out)."""
    check_k_lambda(pt.patch_size, pt.patch_fraction)
    if base.kind != "bytelm":
        raise ValueError(f"patch-level training runs kind 'bytelm', the run config says {base.kind!r}")
    lam = float(pt.patch_fraction)
    phases = []
    for name, k, share, settings in (("patch", pt.patch_size, lam, pt.patch_phase),
                                     ("byte", 1, 1.0 - lam, pt.byte_phase)):
        if share <= 0:
            continue
        cfg = copy.deepcopy(base)
        cfg.task = dict(base.task, patch_size=k)
        cfg.optim = copy.deepcopy(settings.optim or base.optim)
        cfg.schedule = copy.deepcopy(settings.schedule or base.schedule)
        phases.append(Phase(name, cfg, share))
    return phases


def measure_step(cfg: TrainConfig, config_dir: Optional[Path] = None, n_batches: int = 4) -> tuple[float, float]:
    """(training FLOPs, target bytes) of one optimiser step of ``cfg``: the mean of its first batches
    (``Task.planning_flops_per_batch``: no model runs)."""
    from ..training.task import build_task

    task = build_task(cfg, config_dir)
    it = task.train_batches(0, 1)
    flops, nbytes = 0.0, 0.0
    for _ in range(n_batches):
        b = next(it)
        flops += task.planning_flops_per_batch(b)
        nbytes += float(b["mask"].sum())
    return flops / n_batches, nbytes / n_batches


def plan(phases: list[Phase], budget: Budget, config_dir: Optional[Path] = None) -> list[Phase]:
    """Set each phase's step count (and per-step cost) from ``budget``; see the module docstring."""
    if not phases:
        raise ValueError("nothing to plan: no phase has a share of the bytes")
    for ph in phases:
        ph.flops_per_step, ph.bytes_per_step = measure_step(ph.config, config_dir)
        if ph.bytes_per_step <= 0:
            raise ValueError(f"phase {ph.name!r}: its batches hold no target bytes")
    if budget.kind == "bytes":
        total_bytes = float(budget.value)
    else:
        total_bytes = float(budget.value) / sum(ph.share * ph.flops_per_step / ph.bytes_per_step for ph in phases)
    for ph in phases:
        ph.steps = int(round(ph.share * total_bytes / ph.bytes_per_step))
        ph.config.steps = max(ph.steps, 1)
    short = [ph for ph in phases if ph.steps < 1]
    if short:
        need = ", ".join(f"{ph.name} phase {ph.bytes_per_step:.0f} bytes / {ph.flops_per_step:.3g} FLOPs a step "
                         f"(share {ph.share:.3g})" for ph in short)
        raise ValueError(f"budget {budget.kind} = {budget.value:g} is too small for one step of each phase: {need}")
    return phases


@dataclass
class PhasedResult:
    out_dir: Path  # the final phase's bundle
    flops: int = 0
    bytes: int = 0
    wall_s: float = 0.0
    bpb: Optional[float] = None  # held-out bits per byte at the end
    curve: list[dict] = field(default_factory=list)  # {"phase", "step", "flops", "bytes", "bpb"}, cumulative
    phases: list[dict] = field(default_factory=list)  # name, dir, steps, flops, bytes, wall_s


def run_phases(phases: list[Phase], out_dir: str | Path, config_dir: Optional[Path] = None) -> PhasedResult:
    """Train the planned phases in order with the one loop, each starting from the previous one's
    weights (``task.init_from``), and gather cumulative FLOPs / bytes / held-out bpb."""
    from ..training.loop import train
    from ..training.metrics import read_metrics

    out = Path(out_dir)
    res = PhasedResult(out)
    prev: Optional[Path] = None
    for i, ph in enumerate(phases):
        last = i == len(phases) - 1
        d = out if last else out / f"{ph.name}_phase"
        cfg = copy.deepcopy(ph.config)
        if prev is not None:
            cfg.task = dict(cfg.task, init_from=str(prev.resolve()))
        t0 = time.perf_counter()
        r = train(cfg, d, config_dir=config_dir)
        wall = time.perf_counter() - t0
        ph_bytes = 0
        for rec in read_metrics(d):
            if rec.get("bpb") is not None and not (i > 0 and rec.get("step") == 0):
                res.curve.append({"phase": ph.name, "step": rec["step"], "flops": res.flops + int(rec.get("flops") or 0),
                                  "bytes": res.bytes + int(rec.get("bytes") or 0), "bpb": float(rec["bpb"])})
            ph_bytes = max(ph_bytes, int(rec.get("bytes") or 0))
        res.phases.append({"name": ph.name, "dir": str(d), "steps": cfg.steps, "flops": r.flops, "bytes": ph_bytes,
                           "wall_s": wall, "patch_size": cfg.task.get("patch_size")})
        res.flops += r.flops
        res.bytes += ph_bytes
        res.wall_s += wall
        res.bpb = r.bpb[-1][1] if r.bpb else res.bpb
        prev = d
    return res


def patch_train(base: TrainConfig, pt: PatchTrainConfig, budget: Budget, out_dir: str | Path,
                config_dir: Optional[Path] = None) -> PhasedResult:
    """Plan and run a K, λ ByteLM run (K=1 or λ=0: the byte-level baseline)."""
    return run_phases(plan(patch_train_phases(base, pt), budget, config_dir), out_dir, config_dir)


def patch_train_config_from_dict(data: dict, source: Optional[str] = None) -> PatchTrainConfig:
    return cfgio.from_dict(PatchTrainConfig, data, source=source)
