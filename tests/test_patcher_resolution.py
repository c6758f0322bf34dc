"""One patcher resolution (bltkit.patching.resolve_patcher) behind every entry point: a calibrated
entropy model (global and monotonic threshold, with a maximum patch length) gives the same patches
of one text through training batches (on the fly and from precompute shards), the precompute
statistics, `bltkit patch --model`, `bltkit.load(...).patch()` and the boundaries the cached
generator decides; and the layering rule of the resolution itself."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import bltkit
from bltkit import config as cfgio
from bltkit.cli import main
from bltkit.data.sources import DataSource
from bltkit.inference.boundaries import OnlineBoundaries
from bltkit.patching import PatcherConfig, resolve_patcher, save_patcher_settings
from bltkit.training.config import train_config_from_dict
from bltkit.training.loop import train
from bltkit.training.task import build_task
from entropy_model.calibrate import calibrate_directory, length_histogram
from entropy_model.model import EntropyModel, load_entropy_config
from entropy_model.precompute import precompute

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_LEN = 5


@pytest.fixture(scope="module")
def text():
    """About 600 bytes of real text (the first document of builtin/devil's held-out split)."""
    return next(DataSource("builtin/devil:valid").documents())[:600]


def _cut(lengths: list[int], n: int) -> list[int]:
    """Patch lengths restricted to the first ``n`` positions."""
    out, at = [], 0
    for k in lengths:
        if at >= n:
            break
        out.append(min(k, n - at))
        at += k
    return out


@pytest.fixture(scope="module", params=["entropy", "monotonic"])
def calibrated(request, text, tmp_path_factory):
    """(scheme, entropy model dir, text file): the tiny entropy model, calibrated on builtin/devil
    with ``max_patch_length`` MAX_LEN, its settings only in its patcher.yaml."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp(f"cal-{request.param}")
    em = root / "em"
    EntropyModel(load_entropy_config("tiny")).save_pretrained(em)
    calibrate_directory(em, ["builtin/devil"], 3.5, monotonic=request.param == "monotonic", sample_bytes=20_000,
                        max_patch_length=MAX_LEN)
    f = root / "doc.txt"
    f.write_bytes(text)
    return request.param, em, f


def _run_config(scheme, em, f, **patcher):
    n = len(f.read_bytes()) + 1  # one row holds BOS + text + EOS exactly: its patches are the document's
    return train_config_from_dict({
        "kind": "blt", "model": "tiny", "model_overrides": ["hash.vocab=257", "global_model.n_layers=1", "decoder.n_layers=1"],
        "patcher": dict(scheme=scheme, entropy_model=str(em), **patcher),  # threshold, max length: patcher.yaml's
        "data": {"train": [str(f)], "eval": [str(f)], "seq_len": n, "batch_size": 1, "eval_rows": 1,
                 "shuffle_buffer": 1},  # the first batch is the first row
        "steps": 1, "eval_every": 0, "checkpoint_every": 0, "progress": False})


def test_one_calibrated_bundle_patches_alike_everywhere(calibrated, text, tmp_path, monkeypatch, capsys):
    scheme, em, f = calibrated
    cal = cfgio.from_dict(PatcherConfig, cfgio.read_yaml(em / "patcher.yaml"))
    assert cal.scheme == scheme and cal.max_patch_length == MAX_LEN and cal.threshold is not None

    # Training batches: the run's one row is the document BOS + text + EOS.
    cfg = _run_config(scheme, em, f)
    train(cfg, tmp_path / "run")
    row = next(build_task(cfg).train_batches(0, 1))["patch_lengths"][0]
    doc = [int(v) for v in row if v > 0]
    assert sum(doc) == len(text) + 2 and max(doc) == MAX_LEN and len(set(doc)) > 2  # varied, and capped
    prefix = _cut(doc, len(text) + 1)  # the same rule on BOS + text (patching is causal)

    # Training batches from precompute shards, and the shards' own statistics.
    index = precompute(em, [str(f)], tmp_path / "shards", log=lambda *_: None)
    assert index["patcher"] == cal.rule()
    assert index["stats"][str(f)]["histogram"] == {str(k): v for k, v in length_histogram(torch.tensor([doc])).items()}
    pre = build_task(_run_config(scheme, em, f, precomputed=str(tmp_path / "shards")))
    assert next(pre.train_batches(0, 1))["patch_lengths"][0].tolist() == row.tolist()

    # A bundle whose bundle.yaml names only the scheme: the threshold and the maximum length still
    # come from the entropy model's patcher.yaml, for every reader of the bundle.
    bundle = tmp_path / "bundle"
    shutil.copytree(tmp_path / "run", bundle)
    meta = cfgio.read_yaml(bundle / "bundle.yaml")
    assert meta["patcher"]["threshold"] == cal.threshold and meta["patcher"]["max_patch_length"] == MAX_LEN
    meta["patcher"] = {"scheme": scheme, "entropy_model": "entropy_model"}
    cfgio.write_yaml(meta, bundle / "bundle.yaml")
    for b in (tmp_path / "run", bundle):
        # bltkit.load(...).patch()
        lm = bltkit.load(b, device="cpu")
        assert lm.patch(text).lengths == prefix
        # bltkit patch --model (BOS left out of what it prints)
        assert main(["patch", "--model", str(b), "--json", text.decode()]) == 0
        assert [1] + json.loads(capsys.readouterr().out)["patch_lengths"] == prefix
        # generation: the boundaries the cached generator decides while it reads the prompt
        starts: list[torch.Tensor] = []
        decide = OnlineBoundaries.decide

        def record(self, ids, pos, *args, **kwargs):  # one row: no padding positions to leave out
            out = decide(self, ids, pos, *args, **kwargs)
            starts.append((pos + 1)[out])  # positions that start a patch
            return out

        monkeypatch.setattr(OnlineBoundaries, "decide", record)
        lm.generate(text.decode(), max_new_bytes=1)
        monkeypatch.setattr(OnlineBoundaries, "decide", decide)
        at = sorted({0} | {int(c) for c in torch.cat(starts).tolist() if c < len(text) + 1})
        assert [b - a for a, b in zip(at, at[1:] + [len(text) + 1])] == prefix


def test_layering_rule(tmp_path):
    """Lowest first: patcher.yaml, bundle/run settings, overrides; a scheme change drops the
    thresholds and calibration below it, a threshold drops the calibration record; the maximum
    length and the rounding carry through."""
    em = tmp_path / "em"
    torch.manual_seed(0)
    EntropyModel(load_entropy_config("tiny")).save_pretrained(em)
    from bltkit.patching.config import CalibrationRecord

    rec = CalibrationRecord(target_mean=4.0, achieved_mean=4.1, documents=3, bytes=100)
    save_patcher_settings(em, PatcherConfig(scheme="monotonic", threshold=0.25, max_patch_length=7, calibration=rec))
    got = resolve_patcher({"entropy_model": str(em)})
    assert (got.scheme, got.threshold, got.max_patch_length, got.calibration) == ("monotonic", 0.25, 7, rec)
    assert got.entropies_fp16 is True and got.entropy_model == str(em)
    # a threshold given over it keeps the scheme and the maximum length, not the record
    got = resolve_patcher(entropy_model=em, overrides={"threshold": 0.5})
    assert (got.scheme, got.threshold, got.max_patch_length, got.calibration) == ("monotonic", 0.5, 7, None)
    # another scheme: the relative threshold is no global one
    with pytest.raises(ValueError, match="needs a threshold"):
        resolve_patcher({"scheme": "entropy", "entropy_model": str(em)})
    got = resolve_patcher({"scheme": "entropy", "entropy_model": str(em), "threshold": 3.0})
    assert (got.scheme, got.threshold, got.max_patch_length) == ("entropy", 3.0, 7)
    got = resolve_patcher({"scheme": "static"}, entropy_model=em)
    assert (got.scheme, got.patch_size, got.threshold, got.max_patch_length) == ("static", 4, None, 7)
    # relative paths beside the file that names them (a run config's directory); run dirs' model/
    run = tmp_path / "cfgdir" / "runs" / "em-run"
    shutil.copytree(em, run / "model")
    got = resolve_patcher({"entropy_model": "runs/em-run"}, base_dir=tmp_path / "cfgdir")
    assert got.entropy_model == str(run / "model") and got.threshold == 0.25
    with pytest.raises(FileNotFoundError, match="no-such"):
        resolve_patcher({"entropy_model": "no-such"}, base_dir=tmp_path)
    with pytest.raises(ValueError, match="needs an entropy model"):
        resolve_patcher({"scheme": "monotonic", "threshold": 0.1})
