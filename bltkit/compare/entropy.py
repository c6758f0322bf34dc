"""The entropy model behind the entropy-patched variants: one model, trained (or given) once per
comparison, its threshold calibrated to a target mean patch length (BLT paper §2.3;
docs/reference-semantics.md §3, §4.4), then shared by every variant whose patcher needs entropies
and names no entropy model of its own.

Training goes through the one loop (kind ``entropy``, ``bltkit train-entropy``); calibration and
patching through the patching package (``entropy_model.calibrate``, ``bltkit.patching.resolve_patcher``).
Variant patcher settings are resolved by ``resolve_patcher`` with the calibrated threshold as the
layer under them: filled in, never overridden, so a variant that gives its own ``threshold`` or
``entropy_model`` keeps it.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

from .. import config as cfgio
from ..patching.config import PatcherConfig, entropy_model_dir, merge, resolve_patcher
from ..training.config import train_config_from_dict

ENTROPY_DIR = "_entropy_model"


class EntropyPatching:
    def __init__(self, cfg, out: Path, source: str, config_dir: Optional[Path]):
        self.cfg, self.out, self.source, self.config_dir = cfg, out, source, config_dir
        self.model_dir: Optional[Path] = None
        self.threshold: Optional[float] = None
        self.calibrated_mean: Optional[float] = None
        self.train_flops: int = 0

    def resolve(self, patcher: PatcherConfig, what: str = "a variant's patcher") -> PatcherConfig:
        """``patcher`` resolved (``resolve_patcher``, relative paths beside the config). One whose
        scheme needs entropies and that names no entropy model gets the shared one, and with the
        global scheme its calibrated threshold under ``patcher``'s own settings."""
        source = f"{self.source}: {what}"
        if not patcher.needs_scores or patcher.entropy_model is not None:
            return resolve_patcher(patcher, base_dir=self.config_dir, source=source)
        self._prepare()
        if (patcher.scheme or "entropy") == "entropy":  # the calibrated θ is a global one
            patcher = merge(PatcherConfig(scheme="entropy", threshold=self.threshold), patcher)
        return resolve_patcher(patcher, entropy_model=self.model_dir, base_dir=self.config_dir, source=source)

    def summary(self) -> Optional[dict]:
        if self.model_dir is None:
            return None
        return {"dir": str(self.model_dir), "threshold": self.threshold, "calibrated_mean_patch_length": self.calibrated_mean,
                "target_mean_patch_length": self.setup.target_mean_patch_length, "training_flops": self.train_flops}

    @property
    def setup(self):
        if self.cfg.entropy is None:
            raise ValueError(f"{self.source}: a variant uses patcher.scheme 'entropy' but the config has no "
                             f"'entropy:' section (give entropy.model or entropy.train)")
        return self.cfg.entropy

    def _prepare(self) -> None:
        if self.model_dir is not None:
            return
        setup = self.setup
        if setup.model is not None:
            self.model_dir = entropy_model_dir(setup.model, self.config_dir)
        else:
            self.model_dir = self._train()
        self.threshold, self.calibrated_mean = calibrate(self.model_dir, self._calibration_docs(),
                                                         setup.target_mean_patch_length)

    def _train(self) -> Path:
        from ..training.loop import train

        data = copy.deepcopy(self.setup.train)
        data["kind"] = "entropy"
        data.setdefault("data", copy.deepcopy(self.cfg.base.get("data", {})))
        data.setdefault("checkpoint_every", 0)
        tc = train_config_from_dict(data, source=f"{self.source} entropy.train")
        d = self.out / ENTROPY_DIR
        if (d / "bundle.yaml").is_file():  # trained by an earlier run of this comparison
            return d / "model"
        r = train(tc, d, config_dir=self.config_dir)
        self.train_flops = r.flops
        return d / "model"

    def _calibration_docs(self) -> list[bytes]:
        """The first ``calibration_bytes`` of the comparison's training documents (never held-out ones)."""
        from ..training.data import DataConfig, training_documents

        data = cfgio.from_dict(DataConfig, self.cfg.base.get("data", {}), source=self.source, prefix="base.data")
        return list(training_documents(data.resolved(self.config_dir), self.setup.calibration_bytes))


def calibrate(model_dir: Path, docs: list[bytes], target: float) -> tuple[float, float]:
    """(threshold, mean patch length it gives) on ``docs`` for the entropy model in ``model_dir``
    (the patching package's exact bisection, ``entropy_model.calibrate``)."""
    from entropy_model.calibrate import calibrate_threshold, document_entropies
    from entropy_model.model import EntropyModel

    model = EntropyModel.from_pretrained(model_dir)
    res = calibrate_threshold(document_entropies(model, docs), target)
    return float(res.threshold), float(res.achieved_mean)
