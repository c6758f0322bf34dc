"""The entropy model behind the entropy-patched variants: one model, trained (or given) once per
comparison, its threshold calibrated to a target mean patch length (BLT paper §2.3;
docs/reference-semantics.md §3, §4.4), then shared by every variant whose patcher needs entropies
and names no entropy model of its own.

Training goes through the one loop (kind ``entropy``, ``bltkit train-entropy``); calibration and
patching through the patching package (``entropy_model.calibrate``, ``bltkit.patching.resolve_patcher``).

Variant patcher settings are resolved by ``resolve_patcher`` with the calibrated threshold as the
layer under them: filled in, never overridden, so a variant that gives its own ``threshold`` or
``entropy_model`` keeps it.

The entropies depend on the model and the text, not on a threshold, so with ``entropy.precompute``
(the default) they are computed once: ``bltkit precompute``'s shards (``entropy_model.precompute``)
of every document the variants patch, in ``OUT/_entropy_model/entropies/``. Those documents are
the base data's training pass (``training.data.training_documents``: each training source up to
``data.limit_bytes``, as the loader reads it) and the held-out documents the evaluation patches
(``training.data.heldout_patched``); every variant shares the data, so one set serves all. A
variant patching with the shared model gets ``precomputed:`` filled in (unless it gives its own,
or rounds no entropies to float16, which the shards store) and patches exactly as on the fly
(training/precomputed.py), without running the model; the threshold is calibrated from the same
shards. A rerun reuses finished shards made with the same model weights and data; others are
replaced.
"""
from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

from .. import config as cfgio
from ..patching.config import PatcherConfig, entropy_model_dir, merge, resolve_patcher
from ..training.config import train_config_from_dict

ENTROPY_DIR = "_entropy_model"
ENTROPIES_SUBDIR = "entropies"  # the precomputed shards, under ENTROPY_DIR


class EntropyPatching:
    def __init__(self, cfg, out: Path, source: str, config_dir: Optional[Path]):
        self.cfg, self.out, self.source, self.config_dir = cfg, out, source, config_dir
        self.model_dir: Optional[Path] = None
        self.threshold: Optional[float] = None
        self.calibrated_mean: Optional[float] = None
        self.train_flops: int = 0
        self.entropies_dir: Optional[Path] = None  # the precomputed shards, once written
        self.precomputed_shards: int = 0  # shards this run computed (0 when a finished set was reused)
        self.precompute_s: float = 0.0  # its wall-clock seconds

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
        out = resolve_patcher(patcher, entropy_model=self.model_dir, base_dir=self.config_dir, source=source)
        if self.entropies_dir is not None and out.precomputed is None and out.entropies_fp16:
            out = replace(out, precomputed=str(self.entropies_dir))
        return out

    def summary(self) -> Optional[dict]:
        if self.model_dir is None:
            return None
        return {"dir": str(self.model_dir), "threshold": self.threshold, "calibrated_mean_patch_length": self.calibrated_mean,
                "target_mean_patch_length": self.setup.target_mean_patch_length, "training_flops": self.train_flops,
                "precomputed": None if self.entropies_dir is None else str(self.entropies_dir),
                "precomputed_shards_computed": self.precomputed_shards, "precompute_s": round(self.precompute_s, 2)}

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
        if setup.precompute:
            self.entropies_dir = self._precompute()
        self.threshold, self.calibrated_mean = calibrate(self.model_dir, self._calibration_docs(),
                                                         setup.target_mean_patch_length, self.entropies_dir)

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

    def _data(self):
        from ..training.data import DataConfig

        data = cfgio.from_dict(DataConfig, self.cfg.base.get("data", {}), source=self.source, prefix="base.data")
        return data.resolved(self.config_dir)

    def _calibration_docs(self) -> list[bytes]:
        """The first ``calibration_bytes`` of the comparison's training documents (never held-out ones)."""
        from ..training.data import training_documents

        return list(training_documents(self._data(), self.setup.calibration_bytes))

    def _precompute(self) -> Path:
        """The shards of every document the variants patch (see the module docstring), computed
        once: a finished set made with this model and data is reused as it is."""
        from entropy_model.precompute import INDEX_FILE, _fingerprint_file, precompute

        from ..runtime import resolve_device
        from ..training.data import heldout_patched, patched_sources, training_documents
        from ..weights import WEIGHTS_FILE

        data = self._data()
        sources = list(dict.fromkeys(spec for spec, _ in patched_sources(data)))
        picked = {k: v for k, v in cfgio.to_dict(data).items() if k not in ("batch_size", "shuffle_buffer")}
        selection = json.loads(json.dumps(picked))  # as the index stores it (plain JSON)
        d = self.out / ENTROPY_DIR / ENTROPIES_SUBDIR
        index = d / INDEX_FILE
        precision = "auto"
        if index.is_file():
            old = json.loads(index.read_text(encoding="utf-8"))
            st = old.get("settings", {})
            same = (st.get("weights") == _fingerprint_file(self.model_dir / WEIGHTS_FILE)
                    and st.get("selection") == selection and st.get("data") == sources)
            if same and old.get("finished"):
                return d
            if not same:  # another model or other data: this comparison's own cache, replaced
                shutil.rmtree(d)
            else:  # resumed in the precision it began in (a rerun on another device may resolve another)
                precision = st.get("precision", "auto")

        def documents():
            for s in data.train:
                for doc in training_documents(replace(data, train=[s])):
                    yield s.path, doc
            for name, _, doc in heldout_patched(data):
                yield name, doc

        device = resolve_device(str(self.cfg.base.get("device", "auto")))
        t0 = time.perf_counter()
        res = precompute(self.model_dir, sources, d, device=device, documents=documents, selection=selection,
                         log=lambda msg: None, precision=precision)
        self.precomputed_shards = int(res["computed"])
        self.precompute_s = time.perf_counter() - t0
        return d


def calibrate(model_dir: Path, docs: list[bytes], target: float,
              precomputed: Optional[Path] = None) -> tuple[float, float]:
    """(threshold, mean patch length it gives) on ``docs`` for the entropy model in ``model_dir``
    (the patching package's exact bisection, ``entropy_model.calibrate``, on float16-rounded
    entropies as the patcher rounds them). Documents found in the ``precomputed`` shards are read
    from there; the model runs only on the others."""
    from entropy_model.calibrate import calibrate_threshold, document_entropies
    from entropy_model.model import EntropyModel

    from ..data.vocab import encode_tensor
    from ..training.precomputed import PrecomputedEntropies

    ents: list = [None] * len(docs)
    if precomputed is not None:
        shards = PrecomputedEntropies(precomputed, model_dir)
        for i, doc in enumerate(docs):
            try:
                ents[i] = shards.entropies(encode_tensor(doc))
            except ValueError:  # not among the shards (calibration reads past the variants' data)
                pass
    missing = [i for i, e in enumerate(ents) if e is None]
    if missing:
        model = EntropyModel.from_pretrained(model_dir)
        for i, e in zip(missing, document_entropies(model, [docs[i] for i in missing])):
            ents[i] = e
    res = calibrate_threshold(ents, target)
    return float(res.threshold), float(res.achieved_mean)
