"""Threshold calibration, offline precompute (resumable), and the patch/calibrate/precompute commands."""
import json
import math
import os

import pytest
import torch

from bltkit.cli import main
from bltkit.data.corpus import builtin_corpus_path
from bltkit.data.vocab import OFFSET
from bltkit.patching.config import load_patcher_settings
from bltkit.patching.patcher import Patcher
from entropy_model.calibrate import calibrate_directory, calibrate_threshold
from entropy_model.model import EntropyModel, EntropyModelConfig
from entropy_model.precompute import EntropyShards, precompute


@pytest.fixture(scope="module")
def em_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("em")
    EntropyModel(EntropyModelConfig(dim=32, n_layers=2, n_heads=2, window=64)).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """Real English text: the built-in corpus's first document(s), as a plain .txt file."""
    from bltkit.data.sources import iter_documents

    assert builtin_corpus_path().is_dir()
    docs = list(iter_documents(["builtin"], limit_bytes=20_000))
    p = tmp_path_factory.mktemp("data") / "real.txt"
    p.write_bytes(b"\n\n".join(docs))
    return p


# The untrained model's global entropies crowd near ln 260, closer than float16 steps there, so the
# global case calibrates float32 entropies; the relative rule spreads them and rounds as training does.
@pytest.mark.parametrize("monotonic,fp16", [(False, False), (True, True)])
def test_calibration_lands_within_5_percent_on_real_text(em_dir, text_file, monotonic, fp16, tmp_path):
    import shutil

    d = tmp_path / "em"
    shutil.copytree(em_dir, d)
    res = calibrate_directory(d, [str(text_file)], 4.5, monotonic=monotonic, sample_bytes=text_file.stat().st_size, entropies_fp16=fp16)
    assert abs(res.achieved_mean - 4.5) / 4.5 < 0.05
    cfg = load_patcher_settings(d)
    assert cfg.scheme == ("monotonic" if monotonic else "entropy") and cfg.threshold == res.threshold
    assert cfg.entropies_fp16 is fp16
    # the saved threshold reproduces the mean through the ordinary patcher on the same documents
    p = Patcher.from_entropy_model(d)
    doc = text_file.read_bytes()
    from bltkit.data.vocab import encode_tensor

    lengths = p([encode_tensor(doc)], include_next_token=False).rows()[0]
    assert abs(sum(lengths) / len(lengths) - res.achieved_mean) < 1e-9


def test_calibrate_threshold_exact_on_given_entropies():
    g = torch.Generator().manual_seed(0)
    ents = [torch.rand(n, generator=g) * 5 for n in (50, 200, 3)]
    res = calibrate_threshold(ents, 3.0)
    pl = Patcher(scheme="entropy", threshold=res.threshold)([torch.full((e.numel(),), 5) for e in ents],
                                                            include_next_token=False, scores=ents)
    assert pl.patch_lengths.sum().item() / (pl.patch_lengths > 0).sum().item() == pytest.approx(res.achieved_mean)
    assert res.achieved_mean == pytest.approx(3.0, rel=0.05)
    capped = calibrate_threshold(ents, 3.0, max_patch_length=2)  # a mean above the cap cannot be reached
    assert capped.achieved_mean <= 2.0
    assert max(capped.histogram) <= 2


def test_calibration_bad_input(em_dir, tmp_path):
    ents = [torch.rand(20)]
    for bad in (0.5, math.nan, -3.0):
        with pytest.raises(ValueError, match="target mean"):
            calibrate_threshold(ents, bad)
    with pytest.raises(ValueError, match="max_patch_length"):
        calibrate_threshold(ents, 4.0, max_patch_length=0)
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        calibrate_directory(tmp_path / "no-such-model", ["x.txt"], 4.5)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        calibrate_directory(em_dir, [str(tmp_path / "missing.txt")], 4.5)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00\x01")
    with pytest.raises(ValueError, match="bad.bin"):
        calibrate_directory(em_dir, [str(bad)], 4.5)


def test_precompute_resumes_without_redoing_shards(em_dir, tmp_path):
    data = tmp_path / "docs"
    data.mkdir()
    for i in range(7):
        (data / f"d{i}.txt").write_bytes((f"Document {i}: " + "some words here, " * (5 + 3 * i)).encode())
    out = tmp_path / "out"
    first = precompute(em_dir, [str(data)], out, shard_docs=2, threshold=5.0, max_new_shards=2, log=lambda *_: None)
    assert first["computed"] == 2 and not first["finished"] and len(first["shards"]) == 2
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.safetensors")}
    assert sorted(mtimes) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    second = precompute(em_dir, [str(data)], out, shard_docs=2, threshold=5.0, log=lambda *_: None)
    assert second["computed"] == 2 and second["finished"]  # shards 2 and 3 only (7 docs, 2 a shard)
    for name, t in mtimes.items():
        assert (out / name).stat().st_mtime_ns == t
    assert precompute(em_dir, [str(data)], out, shard_docs=2, threshold=5.0, log=lambda *_: None)["computed"] == 0
    # a shard renamed into place whose index update was lost is adopted, not recomputed
    index = json.loads((out / "index.json").read_text())
    index["shards"] = index["shards"][:3]
    (out / "index.json").write_text(json.dumps(index))
    t3 = (out / "shard-00003.safetensors").stat().st_mtime_ns
    again = precompute(em_dir, [str(data)], out, shard_docs=2, threshold=5.0, log=lambda *_: None)
    assert again["computed"] == 0 and len(again["shards"]) == 4
    assert (out / "shard-00003.safetensors").stat().st_mtime_ns == t3
    # reader: per-document ids and fp16-stored entropies equal a fresh computation
    shards = EntropyShards(out)
    assert len(shards) == 7 and shards.finished
    model = EntropyModel.from_pretrained(em_dir)
    from entropy_model.calibrate import document_entropies

    for i in (0, 4, 6):
        ids, ents = shards[i]
        doc = (data / f"d{i}.txt").read_bytes()
        assert ids.numel() == len(doc) + 2
        fresh = document_entropies(model, [doc])[0]
        assert torch.allclose(ents, fresh, atol=1e-2)
    stats = again["stats"][str(data)]
    assert stats["documents"] == 7 and stats["mean_patch_length"] > 1
    assert sum(stats["histogram"].values()) == stats["patches"]
    with pytest.raises(ValueError, match="shard_docs"):
        precompute(em_dir, [str(data)], out, shard_docs=3, log=lambda *_: None)
    with pytest.raises(FileNotFoundError, match="index.json"):
        EntropyShards(tmp_path)


def test_precompute_of_given_documents_records_their_selection(em_dir, tmp_path):
    """``documents=`` computes exactly the given (source, document) pairs in order, under the
    source names of ``data``; a rerun with another ``selection`` is refused, naming it."""
    docs = [("src-a", b"first document"), ("src-a", b"second, longer document"), ("src-b", b"third")]
    out = tmp_path / "out"
    index = precompute(em_dir, ["src-a", "src-b"], out, shard_docs=2, documents=lambda: iter(docs),
                       selection={"limit_bytes": 40}, log=lambda *_: None)
    assert index["finished"] and index["computed"] == 2 and index["settings"]["selection"] == {"limit_bytes": 40}
    shards = EntropyShards(out)
    assert [bytes((ids[1:-1] - OFFSET).tolist()) for ids, _ in shards] == [d for _, d in docs]
    assert [s["sources"] for s in index["shards"]] == [["src-a"], ["src-b"]]
    assert precompute(em_dir, ["src-a", "src-b"], out, shard_docs=2, documents=lambda: iter(docs),
                      selection={"limit_bytes": 40}, log=lambda *_: None)["computed"] == 0
    with pytest.raises(ValueError, match="selection"):
        precompute(em_dir, ["src-a", "src-b"], out, shard_docs=2, documents=lambda: iter(docs),
                   selection={"limit_bytes": 80}, log=lambda *_: None)


def test_precompute_records_its_precision_and_refuses_another(em_dir, tmp_path, capsys):
    """``precision`` is what the entropy model computes in: bf16 entropies are the fp32 ones within
    bf16 rounding, the index records the resolved precision (``auto`` is fp32 on a CPU), and a
    rerun in another precision is refused, naming it; an index from before precisions were
    recorded resumes. The command takes --device and --precision."""
    docs = [("src", b"Document one, with a few words. " * 6), ("src", b"Document two is longer. " * 12),
            ("src", b"three")]
    quiet = dict(shard_docs=2, documents=lambda: iter(docs), log=lambda *_: None)
    fp32 = precompute(em_dir, ["src"], tmp_path / "fp32", precision="auto", **quiet)
    bf16 = precompute(em_dir, ["src"], tmp_path / "bf16", precision="bf16", **quiet)
    assert fp32["settings"]["precision"] == "fp32" and bf16["settings"]["precision"] == "bf16"
    gaps = [(a - b).abs().max().item() for (_, a), (_, b) in zip(EntropyShards(tmp_path / "fp32"), EntropyShards(tmp_path / "bf16"))]
    assert len(gaps) == 3 and 0 < max(gaps) < 0.1  # bf16 really ran (not fp32 again), and is close
    with pytest.raises(ValueError, match=r"other settings \(precision: \['bf16'\] vs now \['fp32'\]"):
        precompute(em_dir, ["src"], tmp_path / "bf16", precision="fp32", **quiet)
    index_path = tmp_path / "fp32" / "index.json"
    old = json.loads(index_path.read_text())
    del old["settings"]["precision"]  # written before precisions were recorded
    old["shards"] = old["shards"][:1]  # and interrupted: the second shard's file is adopted
    index_path.write_text(json.dumps(old))
    again = precompute(em_dir, ["src"], tmp_path / "fp32", **quiet)
    assert again["computed"] == 0 and again["finished"] and len(again["shards"]) == 2
    with pytest.raises(ValueError, match="'fp16'"):
        precompute(em_dir, ["src"], tmp_path / "fp16", precision="fp16", **quiet)
    assert not (tmp_path / "fp16").exists()  # refused before anything was written
    data = tmp_path / "docs"
    data.mkdir()
    (data / "d.txt").write_bytes(docs[0][1])
    assert main(["precompute", "--entropy-model", str(em_dir), "--out", str(tmp_path / "cli"), "--device", "cpu",
                 "--precision", "bf16", str(data)]) == 0
    assert json.loads((tmp_path / "cli" / "index.json").read_text())["settings"]["precision"] == "bf16"
    capsys.readouterr()
    with pytest.raises(SystemExit):  # argparse: an unknown precision is a usage error naming it
        main(["precompute", "--entropy-model", str(em_dir), "--out", str(tmp_path / "x"), "--precision", "fp8", str(data)])
    assert "fp8" in capsys.readouterr().err


def test_patch_command_views(em_dir, capsys, tmp_path):
    assert main(["patch", "--scheme", "static", "--patch-size", "3", "--json", "abcdefgh"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"bytes": 8, "patch_lengths": [3, 3, 2], "entropies": None}
    assert main(["patch", "--entropy-model", str(em_dir), "--threshold", "0", "--json", "hey"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bytes"] == 3 and out["patch_lengths"] == [1, 1, 1] and len(out["entropies"]) == 3
    assert main(["patch", "--scheme", "space", "--json", ""]) == 0
    assert json.loads(capsys.readouterr().out) == {"bytes": 0, "patch_lengths": [], "entropies": None}
    assert main(["patch", "--entropy-model", str(em_dir), "--threshold", "5.0", "--max-patch-length", "4",
                 "--png", str(tmp_path / "v.png"), "Hello, patches!"]) == 0
    text = capsys.readouterr().out
    assert "|" in text and "15 bytes" in text and (tmp_path / "v.png").is_file()
    # errors: entropy without a model, missing model dir, negative global threshold
    assert main(["patch", "hello"]) == 2
    assert "needs an entropy model" in capsys.readouterr().err
    assert main(["patch", "--entropy-model", str(tmp_path / "gone"), "--threshold", "1", "x"]) == 2
    assert "gone" in capsys.readouterr().err
    assert main(["patch", "--entropy-model", str(em_dir), "--threshold", "-1", "x"]) == 2
    assert "-1" in capsys.readouterr().err


def test_calibrate_and_precompute_commands(em_dir, text_file, tmp_path, capsys):
    import shutil

    d = tmp_path / "em"
    shutil.copytree(em_dir, d)
    assert main(["calibrate", "--entropy-model", str(d), "--target-mean", "4.5", "--sample-bytes", "8000", str(text_file)]) == 0
    out = capsys.readouterr().out
    assert "mean patch length" in out and "#" in out and (d / "patcher.yaml").is_file()
    assert main(["calibrate", "--entropy-model", str(d), "--target-mean", "0.5", str(text_file)]) == 2
    assert "0.5" in capsys.readouterr().err
    assert main(["patch", "--entropy-model", str(d), "--json", "calibrated threshold in use"]) == 0
    assert len(json.loads(capsys.readouterr().out)["entropies"]) == 27
    assert main(["precompute", "--entropy-model", str(d), "--out", str(tmp_path / "pc"), "--limit-bytes", "5000",
                 str(text_file)]) == 0
    assert "mean patch length" in capsys.readouterr().out


def test_trainer_bridge_and_bundle_patching(em_dir, tmp_path, capsys):
    import shutil

    from bltkit.bundle import BundleMeta, write_bundle_meta
    from bltkit.data.vocab import encode_tensor
    from bltkit.training.patch_source import document_patcher

    fn = document_patcher({"scheme": "entropy", "entropy_model": str(em_dir), "threshold": 5.0, "max_patch_length": 6})
    doc = encode_tensor("A training document, BOS to EOS.")
    lengths = fn(doc)
    assert int(lengths.sum()) == doc.numel() and int(lengths[0]) == 1 and int(lengths.max()) <= 6
    assert [t.tolist() for t in fn.lengths([doc, doc[:5]])] == [lengths.tolist(), fn(doc[:5]).tolist()]
    assert fn.entropy_model_dir == em_dir
    with pytest.raises(ValueError, match="threshold"):
        document_patcher({"scheme": "entropy", "entropy_model": str(em_dir)})  # uncalibrated, none given
    # a bundle: bundle.yaml + model/ + entropy_model/; its patcher settings drive `bltkit patch --model`
    b = tmp_path / "bundle"
    (b / "model").mkdir(parents=True)
    shutil.copytree(em_dir, b / "entropy_model")
    write_bundle_meta(b, BundleMeta(kind="blt", patcher={"scheme": "entropy", "threshold": 0.0,
                                                         "entropy_model": "entropy_model"}, has_entropy_model=True))
    assert main(["patch", "--model", str(b), "--json", "abcd"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["patch_lengths"] == [1, 1, 1, 1] and len(out["entropies"]) == 4


def test_calibrate_accepts_a_run_directory_and_writes_into_its_model(em_dir, text_file, tmp_path):
    import shutil

    # The --help examples pass a train-entropy run directory; its weights live in run/model/.
    run = tmp_path / "run"
    shutil.copytree(em_dir, run / "model")
    res = calibrate_directory(run, [str(text_file)], 4.5, sample_bytes=20_000)
    cfg = load_patcher_settings(run / "model")
    assert cfg.threshold == res.threshold and not (run / "patcher.yaml").exists()
