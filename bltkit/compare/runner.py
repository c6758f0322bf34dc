"""Train every variant of a comparison at the matched budget and gather its figures.

Each variant is planned (``patchtrain.schedule.plan``: steps from the budget, measured on the
variant's own batches) and run with the one training loop (``run_phases``); its directory
``OUT/<name>/`` is the final phase's bundle (``bltkit.load`` reads it). A fixed-K variant's
patch phase lives in ``OUT/<name>/patch_phase/``. Held-out bits per byte are the loop's, on the
rows of ``base.data`` that every variant shares (docs/measurement.md §1); training FLOPs are the loop's
cumulative count (3 x forward, ``training.flops``); the entropy model's patching FLOPs are
reported apart (docs/measurement.md §2). ``mean_patch_length`` is training bytes per position of
the global / backbone model: the BLT's patches, K for a patch phase, 1 for a byte phase.
``bytes_per_patch`` is the variant's own patch or chunk size: K of a fixed-K run (1 for the byte
baseline), and for a BLT or H-Net the bytes a patch or chunk its final phase achieved over its
training steps (the H-Net's logged ``bytes_per_chunk``, the learned BLT's ``bytes_per_patch``,
else the loop's ``mean_patch_length``), byte-weighted. A model that chooses its own boundaries is
planned at its ``target_ratio`` (``patchtrain.schedule``); ``planned_flops`` is what the plan
expected, ``training_flops`` what the run logged (docs/compare.md).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .. import config as cfgio
from ..patching.config import PatcherConfig
from ..patchtrain.schedule import Phase, PatchTrainConfig, PhasedResult, patch_train_phases, plan, run_phases
from ..training.config import TrainConfig, train_config_from_dict
from .config import CompareConfig, VariantConfig


@dataclass
class VariantResult:
    name: str
    kind: str
    training_flops: int
    bytes_seen: int
    parameters: int
    parameters_non_embedding: int
    heldout_bpb: Optional[float]
    mean_patch_length: float
    wall_clock_s: float
    entropy_flops: int = 0
    bytes_per_patch: float = 1.0  # the variant's patch / chunk size (see the module docstring)
    target_ratio: Optional[float] = None  # learned boundaries: the compression trained toward
    planned_flops: int = 0  # the plan's training FLOPs (steps x measured cost a step)
    patch_size: int = 1
    patch_fraction: float = 0.0
    patcher: dict = field(default_factory=dict)
    dir: str = ""
    phases: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)


def variant_train_config(cfg: CompareConfig, v: VariantConfig, source: str,
                         patcher: Optional[PatcherConfig] = None) -> TrainConfig:
    """The shared ``base`` with the variant's kind, model, patcher and ``set`` overrides."""
    data: dict[str, Any] = copy.deepcopy(cfg.base)
    data.update(kind=v.kind, model=v.model, model_overrides=list(v.model_overrides))
    if v.kind == "blt":
        data["patcher"] = _set_values(patcher if patcher is not None else v.patcher)
    data.setdefault("checkpoint_every", 0)
    data.setdefault("log_every", 1)
    if v.set:
        cfgio.apply_overrides(data, list(v.set), source=f"{source} variant {v.name!r}")
    return train_config_from_dict(data, source=f"{source} (variant {v.name!r})")


def variant_phases(cfg: CompareConfig, v: VariantConfig, source: str, patcher_for, out: Path) -> list[Phase]:
    """The variant's phases before planning. ``patcher_for(PatcherConfig, what) -> PatcherConfig``
    resolves a variant's patcher settings (``EntropyPatching.resolve``)."""
    if v.kind == "hnet":  # one phase; the model chooses its chunks
        return [Phase("hnet", variant_train_config(cfg, v, source))]
    if v.kind == "bytelm":
        pt = PatchTrainConfig(patch_size=v.patch_size, patch_fraction=v.patch_fraction,
                              patch_phase=v.patch_phase, byte_phase=v.byte_phase)
        return patch_train_phases(variant_train_config(cfg, v, source), pt)
    final = variant_train_config(cfg, v, source, patcher_for(v.patcher, f"variant {v.name!r} patcher"))
    if v.init_global_from:
        final.task = dict(final.task, init_global_from=str((out / v.init_global_from).resolve()))
    phases = []
    lam = v.patch_fraction
    if lam > 0:  # BLT two-phase (the extension): static K-byte patches first, weights kept
        first_patcher = v.patch_phase_patcher or PatcherConfig(scheme="static",
                                                               patch_size=v.patch_size if v.patch_size > 1 else 4)
        first = variant_train_config(cfg, v, source, patcher_for(first_patcher, f"variant {v.name!r} patch_phase_patcher"))
        first.task = dict(final.task)
        if v.patch_phase.optim is not None:
            first.optim = copy.deepcopy(v.patch_phase.optim)
        if v.patch_phase.schedule is not None:
            first.schedule = copy.deepcopy(v.patch_phase.schedule)
        phases.append(Phase("patch", first, lam))
        final.task.pop("init_global_from", None)  # the second phase starts from the first
    if lam < 1:
        if v.byte_phase.optim is not None:
            final.optim = copy.deepcopy(v.byte_phase.optim)
        if v.byte_phase.schedule is not None:
            final.schedule = copy.deepcopy(v.byte_phase.schedule)
        phases.append(Phase("main" if lam > 0 else "blt", final, 1.0 - lam))
    return phases


def _bundle_figures(bundle_dir: Path) -> tuple[int, int, Optional[float]]:
    """(parameters, non-embedding parameters, target compression of learned boundaries or None)."""
    from ..bundle import load_bundle_models

    meta, model, _ = load_bundle_models(bundle_dir)
    chunking = getattr(model.config, "chunking", None)  # the hnet kind
    target = getattr(meta.patcher, "target_ratio", None) if chunking is None else chunking.target_ratio
    return model.num_parameters(), model.num_parameters(exclude_embeddings=True), target


# what a learned-boundary run logs as its achieved compression, by kind; else the loop's figure
_ACHIEVED_KEYS = ("bytes_per_chunk", "bytes_per_patch", "mean_patch_length")


def _achieved(phase_dir: str) -> float:
    """Bytes a patch or chunk over one phase's training steps: its bytes over its positions, each
    logged step weighted by its bytes (a step of few long patches counts for few positions)."""
    from ..training.metrics import read_metrics

    seen, positions, prev = 0.0, 0.0, 0
    for r in read_metrics(phase_dir):
        key = next((k for k in _ACHIEVED_KEYS if r.get(k)), None)
        nbytes = int(r.get("bytes") or 0)
        if key is not None and nbytes > prev:
            seen += nbytes - prev
            positions += (nbytes - prev) / float(r[key])
        prev = max(prev, nbytes)
    return seen / positions if positions else 1.0


def _bytes_per_patch(v: VariantConfig, res: PhasedResult) -> float:
    """The variant's patch or chunk size (see the module docstring)."""
    if v.kind == "bytelm":
        return float(v.patch_size) if v.patch_fraction > 0 else 1.0
    return _achieved(res.phases[-1]["dir"])


def _mean_patch_length(phases: list[Phase], res: PhasedResult) -> float:
    """Training bytes per backbone position over the whole run (see the module docstring)."""
    positions = 0.0
    for ph, info in zip(phases, res.phases):
        k = ph.config.task.get("patch_size", 1) if ph.config.kind == "bytelm" else None
        positions += info["bytes"] / (k if k is not None else _achieved(info["dir"]))
    return res.bytes / positions if positions else 1.0


def _entropy_flops(res: PhasedResult) -> int:
    from ..training.metrics import read_metrics

    total = 0
    for info in res.phases:
        recs = [r for r in read_metrics(info["dir"]) if "entropy_flops" in r]
        total += int(recs[-1]["entropy_flops"]) if recs else 0
    return total


def run_variant(cfg: CompareConfig, v: VariantConfig, out: Path, source: str, config_dir: Optional[Path],
                patcher_for) -> VariantResult:
    phases = plan(variant_phases(cfg, v, source, patcher_for, out), cfg.budget, config_dir)
    for ph in phases:
        ph.config.eval_every = max(1, ph.config.steps // cfg.eval_points)
    res = run_phases(phases, out / v.name, config_dir)
    params, params_ne, target = _bundle_figures(res.out_dir)
    return VariantResult(
        name=v.name, kind=v.kind, training_flops=res.flops, bytes_seen=res.bytes, parameters=params,
        parameters_non_embedding=params_ne, heldout_bpb=res.bpb, mean_patch_length=_mean_patch_length(phases, res),
        wall_clock_s=res.wall_s, entropy_flops=_entropy_flops(res), bytes_per_patch=_bytes_per_patch(v, res),
        target_ratio=target, planned_flops=int(sum(ph.config.steps * ph.flops_per_step for ph in phases)),
        patch_size=v.patch_size,
        patch_fraction=v.patch_fraction, patcher=_set_values(phases[-1].config.patcher) if v.kind == "blt" else {},
        dir=str(res.out_dir), phases=res.phases, curve=res.curve)


def _set_values(patcher: Optional[PatcherConfig]) -> dict:
    return {k: v for k, v in cfgio.to_dict(patcher).items() if v is not None} if patcher is not None else {}


def run_compare(cfg: CompareConfig, out_dir: str | Path, source: str = "config", config_dir: Optional[Path] = None,
                only: Optional[list[str]] = None) -> list[VariantResult]:
    """Train the (selected) variants into ``out_dir`` and write the results (report.py).
    ``out_dir`` is locked meanwhile (``bltkit.rundir``): a second comparison there fails at once."""
    from ..rundir import locked

    with locked(out_dir) as out:
        return _run_compare(cfg, out, source, config_dir, only)


def _run_compare(cfg: CompareConfig, out: Path, source: str, config_dir: Optional[Path],
                 only: Optional[list[str]]) -> list[VariantResult]:
    from .entropy import EntropyPatching
    from .report import write_report

    variants = cfg.select(only)
    taken = [str(out / v.name) for v in variants if (out / v.name).exists() and any((out / v.name).iterdir())]
    if taken:
        raise ValueError(f"{taken[0]} already exists and is not empty: choose another --out, or --only other variants")
    entropy = EntropyPatching(cfg, out, source, config_dir)
    results: list[VariantResult] = []
    for v in variants:
        results.append(run_variant(cfg, v, out, source, config_dir, entropy.resolve))
        write_report(cfg, results, out, entropy.summary())  # after every variant: partial results survive
    return results
