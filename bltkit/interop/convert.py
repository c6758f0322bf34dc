"""The three conversions behind ``bltkit convert``: read, map names and config, check every
tensor against a bltkit (or HF) model, write. One function a direction; each returns a report of
what was written and what (if anything) changed meaning on the way.

Why staged output: a conversion that fails half-way must not leave a directory that looks like a
usable bundle, so everything is written to a temporary sibling and renamed at the end.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from . import entropy as ent
from . import hf as hfmap
from . import reference as ref
from .checkpoint import load_checked


@dataclass
class ConversionReport:
    out: Path
    config_lines: list[str] = field(default_factory=list)  # a short summary of the model
    notes: list[str] = field(default_factory=list)  # things the user should know
    semantic_changes: list[str] = field(default_factory=list)  # accepted with --allow-semantic-change


@contextmanager
def staged_output(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """A directory to write into that becomes ``out`` only if the block succeeds.

    A non-empty ``out`` is refused unless ``force``, in which case it is replaced at the end.
    """
    final = Path(out)
    if final.exists() and not final.is_dir():
        raise ValueError(f"output {final} exists and is not a directory")
    if final.is_dir() and any(final.iterdir()) and not force:
        raise ValueError(f"output directory {final} is not empty (pass --force to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _summary(cfg) -> list[str]:
    e, g, d, c = cfg.encoder, cfg.global_model, cfg.decoder, cfg.cross_attn
    return [
        f"encoder {e.dim}x{e.n_layers} ({e.n_heads} heads, window {e.window}, doc_reset {e.doc_reset})",
        f"global_model {g.dim}x{g.n_layers} ({g.n_heads} heads, {'block-causal' if g.doc_reset else 'causal'})",
        f"decoder {d.dim}x{d.n_layers} ({d.n_heads} heads, window {d.window}, doc_reset {d.doc_reset})",
        f"cross-attention k={c.k}, {c.n_heads} heads, empty rows {c.empty_rows}, repool {c.repool_each_layer}",
        f"hash tables {cfg.hash.n_functions} x {cfg.hash.group_sizes} x {cfg.hash.vocab}",
    ]


# ---- Hugging Face -> bltkit bundle --------------------------------------------------------------
def hf_to_bundle(src: str | os.PathLike, out: str | os.PathLike, force: bool = False) -> ConversionReport:
    from ..bundle import ENTROPY_SUBDIR, save_bundle
    from ..model import ByteLatentTransformer

    src = Path(src)
    hfc, state = hfmap.read_hf_checkpoint(src)
    cfg = hfmap.hf_config_to_blt(hfc, source=str(src / "config.json"))
    blt_state, patcher_state, origin = hfmap.split_hf_state(state)
    model = load_checked(lambda: ByteLatentTransformer(cfg), blt_state, str(src), lambda k: origin.get(k, k))
    report = ConversionReport(out=Path(out), config_lines=_summary(cfg))
    entropy_model = None
    if patcher_state:
        spec = ent.spec_from_hf(hfc.patcher_config)
        entropy_model, why = ent.build(spec, patcher_state, f"{src} (model.patcher.*)", hfmap.lm_to_hf_patcher_name)
        if entropy_model is None:
            report.notes.append(f"the {len(patcher_state)} patcher tensors were not converted: {why}")
    elif hfc.patch_in_forward:
        report.notes.append("the config asks for entropy patching but the checkpoint has no patcher weights")
    patcher = hfmap.hf_patcher_settings(hfc, ENTROPY_SUBDIR if entropy_model is not None else None)
    if patcher["scheme"] == "static":
        report.notes.append("HF patches every byte alone here (no patcher in forward): bundle patcher static, size 1")
    with staged_output(out, force) as tmp:
        save_bundle(tmp, model, "blt", patcher=patcher, entropy_model=entropy_model)
    return report


# ---- bltkit bundle or model directory -> Hugging Face -------------------------------------------
def _read_blt_source(src: Path):
    """(model directory, bundle meta or None) of a bundle or a bare model directory."""
    from ..bundle import BUNDLE_FILE, MODEL_SUBDIR, read_bundle
    from ..weights import CONFIG_FILE, WEIGHTS_FILE

    if not src.is_dir():
        raise FileNotFoundError(f"bltkit bundle or model directory not found: {src}")
    if (src / BUNDLE_FILE).is_file():
        meta = read_bundle(src)
        if meta.kind != "blt":
            raise ValueError(f"{src} is a bundle of kind {meta.kind!r}; only 'blt' bundles convert to HF's BLT")
        return src / MODEL_SUBDIR, meta
    if (src / CONFIG_FILE).is_file() and (src / WEIGHTS_FILE).is_file():
        return src, None
    raise FileNotFoundError(f"{src} is neither a bltkit bundle ({BUNDLE_FILE}) nor a model directory "
                            f"({CONFIG_FILE} + {WEIGHTS_FILE})")


def blt_to_hf(src: str | os.PathLike, out: str | os.PathLike, allow_semantic_change: bool = False,
              force: bool = False) -> ConversionReport:
    from ..bundle import ENTROPY_SUBDIR
    from ..model import ByteLatentTransformer

    src = Path(src)
    model_dir, meta = _read_blt_source(src)
    model = ByteLatentTransformer.from_pretrained(model_dir)
    cfg = model.config
    report = ConversionReport(out=Path(out), config_lines=_summary(cfg))
    patcher = {}
    if meta is not None and meta.patcher is not None:
        from .. import config as cfgio

        patcher = {k: v for k, v in cfgio.to_dict(meta.patcher).items() if v is not None}
    hfmap.check_hf_blockers(cfg)
    changes = hfmap.hf_semantic_changes(cfg)
    patcher_config, patcher_state = None, {}
    if meta is not None and meta.has_entropy_model:
        converted, why = ent.to_hf_patcher(src / ENTROPY_SUBDIR)
        if converted is None:
            report.notes.append(f"the entropy model was not converted ({why}); the HF model has no patcher: "
                                f"pass patch_lengths to its forward")
        else:
            patcher_config, patcher_state, em_changes = converted
            changes += em_changes
    if not allow_semantic_change:
        hfmap.refuse_semantic_changes(changes)  # all of them at once, model and entropy model
    report.semantic_changes = changes
    if patcher and patcher.get("scheme") not in ("entropy", None):
        report.notes.append(f"bundle patcher scheme {patcher.get('scheme')!r} has no HF equivalent; without "
                            f"patch_lengths HF patches every byte alone")
    hfc, _ = hfmap.blt_config_to_hf(cfg, patcher, patcher_config, allow_semantic_change=True)
    state = hfmap.blt_state_to_hf(model.state_dict())
    state.update(patcher_state)
    with staged_output(out, force) as tmp:
        hfmap.write_hf_checkpoint(tmp, hfc, state)
    return report


# ---- reference (params.json + consolidated.pth) -> bltkit bundle --------------------------------
def reference_to_bundle(src: str | os.PathLike, out: str | os.PathLike, entropy_dir: Optional[str | os.PathLike] = None,
                        force: bool = False) -> ConversionReport:
    from ..bundle import ENTROPY_SUBDIR, save_bundle
    from ..model import ByteLatentTransformer

    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"reference checkpoint directory not found: {src}")
    params_path = src / ref.PARAMS_FILE
    model_args, entropy_args, patcher_args = ref.split_params(ref.read_params(params_path))
    cfg, notes = ref.reference_config_to_blt(model_args, source=str(params_path))
    state = ref.load_reference_weights(src / ref.WEIGHTS_FILE)
    blt_state, origin = ref.reference_state_to_blt(state, cfg, str(src / ref.WEIGHTS_FILE))
    model = load_checked(lambda: ByteLatentTransformer(cfg), blt_state, str(src / ref.WEIGHTS_FILE),
                         lambda k: origin.get(k, k))
    report = ConversionReport(out=Path(out), config_lines=_summary(cfg), notes=list(notes))
    entropy_model = None
    em_dir = Path(entropy_dir) if entropy_dir is not None else (src / "entropy_model")
    if entropy_dir is not None and not em_dir.is_dir():
        raise FileNotFoundError(f"entropy model directory not found: {em_dir}")
    if em_dir.is_dir():
        em_params = ref.read_params(em_dir / ref.PARAMS_FILE)
        em_args = em_params.get("entropy_model", em_params.get("model", em_params))
        spec = ent.spec_from_reference(em_args, str(em_dir / ref.PARAMS_FILE))
        em_state = ref.load_reference_weights(em_dir / ref.WEIGHTS_FILE)
        entropy_model, why = ent.build(spec, em_state, str(em_dir / ref.WEIGHTS_FILE))
        if entropy_model is None:
            report.notes.append(f"the entropy model in {em_dir} was not converted: {why}")
    elif entropy_args is not None:
        report.notes.append("params.json describes an entropy model but no entropy_model/ directory was given")
    patcher, patcher_notes = ref.reference_patcher_settings(model_args, patcher_args,
                                                            ENTROPY_SUBDIR if entropy_model is not None else None)
    report.notes.extend(patcher_notes)
    with staged_output(out, force) as tmp:
        save_bundle(tmp, model, "blt", patcher=patcher, entropy_model=entropy_model)
    return report
