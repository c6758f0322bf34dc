"""Training from precomputed entropy shards (bltkit.training.precomputed, patch_source.py): batches
built on the fly equal batches built from `bltkit precompute` shards, bit for bit, on a subset of
the built-in corpus with the tiny entropy model; mismatched shards are clear errors."""
from __future__ import annotations

import pytest
import torch

from bltkit.bundle import load_bundle_models, read_bundle
from bltkit.data.sources import DataSource
from bltkit.data.vocab import encode_tensor
from bltkit.training.config import train_config_from_dict
from bltkit.training.loop import train
from bltkit.training.task import build_task
from bltkit.patching.entropies import compute_entropies
from entropy_model.model import EntropyModel, load_entropy_config
from entropy_model.precompute import precompute

VALID_BYTES = sum(len(d) for d in DataSource("builtin/devil:valid").documents())


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def em(tmp_path_factory):
    """The tiny entropy model (configs/entropy/tiny.yaml, untrained) and a threshold at the median
    entropy of real text, so that patches vary in length."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("em")
    model = EntropyModel(load_entropy_config("tiny"))
    model.save_pretrained(d)
    doc = encode_tensor(next(DataSource("builtin/devil").documents()))
    theta = float(compute_entropies(model, [doc])[0].median())
    return d, theta


@pytest.fixture(scope="module")
def shards(em, tmp_path_factory):
    """Entropies of the held-out split and the first ~8 kB of builtin/devil (the run reads 4 kB)."""
    out = tmp_path_factory.mktemp("entropies")
    index = precompute(em[0], ["builtin/devil:valid", "builtin/devil"], out, shard_docs=3,
                       limit_bytes=VALID_BYTES + 8000, log=lambda *_: None)
    assert index["finished"] and index["documents"] >= 8
    return out


def _cfg(em, precomputed=None, **kw):
    patcher = {"scheme": "entropy", "entropy_model": str(em[0]), "threshold": em[1]}
    if precomputed is not None:
        patcher["precomputed"] = str(precomputed)
    base = {"kind": "blt", "model": "tiny",
            "model_overrides": ["hash.vocab=257", "global_model.n_layers=1", "decoder.n_layers=1"],
            "patcher": patcher,
            "data": {"train": ["builtin/devil"], "limit_bytes": 4000, "seq_len": 64, "batch_size": 4, "eval_rows": 8},
            "steps": 1, "eval_every": 0, "checkpoint_every": 0, "progress": False}
    base.update(kw)
    return train_config_from_dict(base)


def _same_batch(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _batches(task, n: int = 3) -> list[dict]:
    it = task.train_batches(0, 1)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("packing", ["bytes", "patches"])
def test_on_the_fly_equals_precomputed_batches(em, shards, monkeypatch, packing):
    data = {"train": ["builtin/devil"], "limit_bytes": 4000, "packing": packing,
            "seq_len": 64 if packing == "bytes" else 16, "batch_size": 4, "eval_rows": 8}
    fly = build_task(_cfg(em, data=data))
    fly_batches, fly_eval = _batches(fly), fly.eval_batches()

    from bltkit.patching.patcher import Patcher

    def no_model(*_a, **_k):
        raise AssertionError("the entropy model ran although the entropies are precomputed")

    monkeypatch.setattr(Patcher, "entropies", no_model)
    pre = build_task(_cfg(em, shards, data=data))
    for fb, pb in zip(fly_batches, _batches(pre)):
        _same_batch(fb, pb)
    pre_eval = pre.eval_batches()
    assert len(fly_eval) == len(pre_eval) > 0
    for fb, pb in zip(fly_eval, pre_eval):
        _same_batch(fb, pb)
    # Entropy patching really happened: lengths vary, mean between bytes and the static default.
    pl = torch.cat([b["patch_lengths"].flatten() for b in fly_batches])
    pl = pl[pl > 0]
    assert len(set(pl.tolist())) > 3 and 1.2 < pl.float().mean() < 6


def test_fp32_entropies_option_and_bundle_settings(em, shards, tmp_path):
    """entropies_fp16: false thresholds float32 entropies (still a valid run); a run trained on
    shards writes a bundle whose patcher is the resolved rule, rounding included (so inference
    patches as training did), without the training-only shard directory."""
    fp32 = build_task(_cfg(em, patcher={"scheme": "entropy", "entropy_model": str(em[0]), "threshold": em[1],
                                        "entropies_fp16": False}))
    assert fp32.patcher().config.entropies_fp16 is False and next(fp32.train_batches(0, 1))["ids"].shape == (4, 64)
    train(_cfg(em, shards), tmp_path / "run")
    meta = read_bundle(tmp_path / "run")
    assert meta.patcher.scheme == "entropy" and meta.patcher.threshold == pytest.approx(em[1])
    assert meta.patcher.precomputed is None and meta.patcher.entropies_fp16 is True
    assert meta.patcher.entropy_model == "entropy_model"
    _, model, entropy_model = load_bundle_models(tmp_path / "run")
    assert entropy_model is not None


def test_mismatched_shards_are_named(em, shards, tmp_path):
    with pytest.raises(ValueError, match=r"cover sources .*also patches 'builtin/pydoc' \(data\.train\)"):
        build_task(_cfg(em, shards, data={"train": ["builtin/pydoc"], "seq_len": 64, "batch_size": 4}))
    with pytest.raises(ValueError, match=r"'builtin/kjv:valid' \(held-out split of 'builtin/kjv'\)"):
        build_task(_cfg(em, shards, data={"train": ["builtin/devil", "builtin/kjv"], "seq_len": 64}))
    # reads past what was precomputed: the document is named
    task = build_task(_cfg(em, shards, data={"train": ["builtin/devil"], "limit_bytes": 30_000, "seq_len": 64}))
    with pytest.raises(ValueError, match=r"source 'builtin/devil' document \d+ .* not in the precomputed"):
        _batches(task, 100)
    # another entropy model (other weights)
    torch.manual_seed(1)
    other = tmp_path / "other"
    EntropyModel(load_entropy_config("tiny")).save_pretrained(other)
    with pytest.raises(ValueError, match="another entropy model"):
        build_task(_cfg((other, em[1]), shards))
    # not a precompute directory / missing / with another scheme
    with pytest.raises(FileNotFoundError, match="index.json"):
        build_task(_cfg(em, tmp_path))
    with pytest.raises(FileNotFoundError, match="nope"):
        build_task(_cfg(em, tmp_path / "nope"))
    with pytest.raises(ValueError, match="precomputed only applies to scheme entropy"):
        build_task(_cfg(em, patcher={"scheme": "space", "precomputed": str(shards)}))


def test_unfinished_precompute_is_refused(em, tmp_path):
    out = tmp_path / "partial"
    precompute(em[0], ["builtin/devil:valid"], out, shard_docs=1, max_new_shards=1, log=lambda *_: None)
    with pytest.raises(ValueError, match="not finished.*rerun"):
        build_task(_cfg(em, out, data={"train": ["builtin/devil:valid"], "eval": ["builtin/devil:valid"],
                                       "seq_len": 64}))
