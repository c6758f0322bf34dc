"""The ``Task`` interface: what one model kind tells the single training loop (loop.py).

A task owns everything that differs between model kinds: which model to build, which patcher (if
any) its batches carry, how its loss is computed, what its FLOPs are and how the finished model
is saved. Batches come from the one data pipeline (data.py) for every kind. The loop owns
everything else (optimiser, schedule, accumulation, precision, parallelism, evaluation,
checkpoints, metrics). New kinds register a ``"module:Class"`` in ``TASKS`` (or call
``register_task``) and plug into ``bltkit train`` with no second loop.

Losses are returned as ``(sum of nats, number of real targets)`` so that accumulation and data
parallelism can normalise over the *global* step exactly, and bits per byte is
``sum nats / (ln 2 * n targets)`` (docs/measurement.md §1). A kind with an auxiliary objective (the
H-Net's ratio loss) returns a third value, a penalty in the same units, which joins the gradient
but not the logged loss; its per-step figures go through ``step_stats`` / ``step_metrics``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import config as cfgio
from ..patching.documents import DocumentPatcher
from ..registry import resolve
from .config import TrainConfig
from .data import DataLoader, heldout_batches

# kind -> "module:Class"
TASKS: dict[str, str] = {
    "blt": "bltkit.training.blt_task:BLTTask",
    "entropy": "bltkit.training.entropy_task:EntropyTask",
    "bytelm": "bltkit.patchtrain.task:ByteLMTask",
    "hnet": "bltkit.training.hnet_task:HNetTask",
}


def register_task(kind: str, target: str) -> None:
    TASKS[kind] = target


def build_task(cfg: TrainConfig, config_dir: Optional[Path] = None) -> "Task":
    if cfg.kind not in TASKS:
        raise ValueError(f"unknown model kind {cfg.kind!r}; known: {sorted(TASKS)}")
    return resolve(TASKS[cfg.kind], f"the task of model kind {cfg.kind!r}")(cfg, config_dir)


def masked_nats(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropy nats over masked targets, number of masked targets); logits (B, N, V) fp32."""
    nats = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    m = mask.reshape(-1).to(nats.dtype)
    return (nats * m).sum(), m.sum()


def instantiate_with_state(cls: type[nn.Module], cfg: Any, state: dict[str, torch.Tensor]) -> nn.Module:
    """``cls(cfg)`` holding ``state``'s tensors, built on the meta device so that no throwaway
    random init is allocated (consolidated FSDP checkpoints of a large model load in one copy)."""
    with torch.device("meta"):
        model = cls(cfg)
    model.load_state_dict(state, assign=True)
    return model


class Task(ABC):
    """One model kind's side of training. ``cfg`` is the whole run config."""

    kind: str = ""

    def __init__(self, cfg: TrainConfig, config_dir: Optional[Path] = None):
        self.cfg = cfg
        self.config_dir = config_dir
        self.data = cfg.data.resolved(config_dir)  # the run's data, relative paths found

    def resolve_path(self, path: str) -> str:
        """A path named in the run config: as given, else beside the config (``bltkit.config.resolve_path``;
        a shipped config name found nowhere passes through)."""
        return str(cfgio.resolve_path(path, self.config_dir))

    # ---- model ----------------------------------------------------------------------------------
    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model on the CPU in fp32 (the loop moves it)."""

    @abstractmethod
    def model_config_dict(self) -> dict:
        """The model's config as plain data (written as ``model/config.yaml``)."""

    def shard_units(self, model: nn.Module) -> list[nn.Module]:
        """Sub-modules FSDP2 shards one by one (then the root): every transformer block."""
        from ..nn import TransformerBlock

        return [m for m in model.modules() if isinstance(m, TransformerBlock)]

    # ---- data -----------------------------------------------------------------------------------
    def patcher(self) -> Optional[DocumentPatcher]:
        """The document patcher whose lengths the batches carry; None for byte-level models."""
        return None

    def train_batches(self, rank: int, world_size: int) -> DataLoader:
        """This rank's share of each step's batch, with ``state_dict`` / ``load_state_dict`` (the
        loader state saved in checkpoints)."""
        return DataLoader(self.data, self.patcher(), seed=self.cfg.seed, rank=rank, world_size=world_size)

    def eval_batches(self) -> list[dict[str, torch.Tensor]]:
        """Held-out batches, fixed across evaluations (every rank scores all of them)."""
        return heldout_batches(self.data, self.patcher())

    # ---- objective and accounting -----------------------------------------------------------------
    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """(sum of nats, number of real targets) of ``batch`` (tensors on the model's device),
        optionally with a third value: a differentiable penalty in nats-sum units (scaled like
        the nats by the step's target count), added to the objective and left out of the loss."""

    def eval_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out (nats, targets) for bits per byte; a per-byte likelihood by default."""
        return self.loss(model, batch)

    @abstractmethod
    def flops_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        """Training FLOPs (3 x forward, flops.py) of ``batch``."""

    def planning_flops_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        """Training FLOPs of ``batch`` known before any step, for planning a budget
        (``patchtrain.schedule.plan``): ``flops_per_batch`` unless the model chooses its own
        boundaries, which count them at its target compression."""
        return self.flops_per_batch(batch)

    def extra_flops_per_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, int]:
        """FLOPs reported separately (the entropy model's patching cost), by name."""
        return {}

    def mean_patch_length(self, batch: dict[str, torch.Tensor]) -> Optional[float]:
        """Bytes a patch in ``batch``, or None for byte-level models."""
        return None

    def n_patches(self, batch: dict[str, torch.Tensor]) -> int:
        """Real patches in ``batch`` (0 for byte-level models)."""
        return 0

    def step_stats(self) -> dict[str, float]:
        """Sums over this rank's micro-batches of the step just computed, by name (the same names
        on every rank). Called once a step, after its ``loss`` calls and before
        ``flops_per_batch`` / ``n_patches``; the loop adds them over ranks for ``step_metrics``."""
        return {}

    def step_metrics(self, stats: dict[str, float]) -> dict[str, Any]:
        """Entries of a logged metrics record from the step's ``step_stats`` summed over ranks; a
        ``warning`` entry is also printed on stderr."""
        return {}

    # ---- output ---------------------------------------------------------------------------------
    @abstractmethod
    def save_bundle(self, model: nn.Module, out_dir: Path) -> None:
        """Write the finished model into ``out_dir`` as a bundle (``bltkit.bundle``)."""

    @abstractmethod
    def model_from_state(self, state: dict[str, torch.Tensor]) -> nn.Module:
        """A plain CPU model holding ``state`` (for export after sharded training)."""


def iter_to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
