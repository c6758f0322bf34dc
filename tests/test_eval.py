"""bltkit eval's bits per byte: batched and windowed scoring equal Handle.score, the window rule,
the byte accounting and standard error, every bundle kind, the CLI and its bad input."""
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bltkit
from bltkit.cli import main as cli
from bltkit.evaluation.bpb import evaluate_sources, ratio_stderr
from bltkit.inference.api import Handle
from bltkit.inference.scoring import LN2, plan_windows, score_spans
from bltkit.model import ByteLatentTransformer, load_blt_config
from bltkit.patching.config import PatcherConfig
from bltkit.patchtrain.config import load_bytelm_config
from bltkit.patchtrain.model import ByteLM
from entropy_model.model import EntropyModel, load_entropy_config

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["hello world", "Grüße, 日本語 and more text here.", "a", "hello there, this one is longer than the rest",
         "hello world!"]


def tiny_entropy_model(**over):
    args = ["dim=32", "n_heads=2"] + [f"{k}={v}" for k, v in over.items()]
    return EntropyModel(load_entropy_config("tiny", args))


def make_bundles(root):
    torch.manual_seed(3)
    blt = ByteLatentTransformer(load_blt_config("tiny", ["hash.vocab=257"]))
    out = {"blt": root / "blt", "bytelm": root / "bytelm", "entropy": root / "entropy"}
    Handle(blt, PatcherConfig(scheme="entropy", threshold=5.45, max_patch_length=6), tiny_entropy_model(),
           device=CPU).save(out["blt"])
    Handle(ByteLM(load_bytelm_config("tiny", ["dim=32", "n_heads=2"])), kind="bytelm", device=CPU).save(out["bytelm"])
    # A 4-byte attention window, two layers: each prediction sees 6 bytes back (receptive field).
    Handle(tiny_entropy_model(window=4), kind="entropy", device=CPU).save(out["entropy"])
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return make_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="module")
def handles(bundles):
    return {k: bltkit.load(d, device="cpu") for k, d in bundles.items()}


# ---- the window rule ----------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.integers(1, 200), st.integers(2, 40), st.data())
def test_windows_score_every_byte_once_with_the_stated_context(n, window, data):
    overlap = data.draw(st.integers(0, window - 2))
    first = data.draw(st.integers(0, n - 1))
    ws = plan_windows(n, window, overlap, first)
    scored = [i for w in ws for i in range(w.first, w.end)]
    assert scored == list(range(first, n))  # each byte once, in order
    for w in ws:
        assert 0 <= w.start <= w.first < w.end <= n
        assert 1 + (w.end - w.start) <= window  # BOS + the bytes it reads
        assert w.start == 0 or w.first - w.start >= overlap  # at least `overlap` bytes of context
    if n + 1 <= window:
        assert ws == [plan_windows(n, n + 1, 0, first)[0]] and ws[0].start == 0  # a text that fits: whole


def test_window_arguments_are_checked():
    with pytest.raises(ValueError, match="window must be"):
        plan_windows(10, 1, 0)
    with pytest.raises(ValueError, match="overlap must be .* 0 to window - 2 = 6 bytes, got 7"):
        plan_windows(10, 8, 7)
    with pytest.raises(ValueError, match="nothing to score"):
        plan_windows(3, 8, 2, first=3)


# ---- batched scoring equals Handle.score, every bundle kind ---------------------------------------
@pytest.mark.parametrize("kind", ["blt", "bytelm", "entropy"])
def test_batched_scores_equal_handle_score(handles, kind):
    h = handles[kind]
    data = [t.encode() for t in TEXTS]
    spans = score_spans(h, data, batch_size=3)
    for text, s in zip(TEXTS, spans):
        ref = h.score(text)
        assert len(s.nats) == len(text.encode())  # raw UTF-8 bytes, no BOS/EOS
        np.testing.assert_allclose(s.nats / LN2, ref.surprisal, rtol=1e-5, atol=1e-5)
    # A span of a text: the same per-byte scores as the whole text's, from that byte on.
    (tail,) = score_spans(h, [data[1]], firsts=[7])
    np.testing.assert_allclose(tail.nats, spans[1].nats[7:], rtol=1e-5, atol=1e-6)


def test_shared_prefix_rows_score_as_alone(handles):
    h = handles["blt"]
    texts = [b"the cat sat", b"the cat sat on", b"the cat sa!", b"the cat sat"]  # prefixes, a shared input, a twin
    together = score_spans(h, texts, firsts=[4, 4, 4, 0], batch_size=2)
    for text, first, s in zip(texts, [4, 4, 4, 0], together):
        (alone,) = score_spans(h, [text], firsts=[first])
        np.testing.assert_allclose(s.nats, alone.nats, rtol=1e-5, atol=1e-6)
        assert (s.greedy == alone.greedy).all()


@pytest.mark.parametrize("kind", ["blt", "bytelm", "entropy"])
def test_windowed_score_is_the_windows_scores(handles, kind):
    h = handles[kind]
    text = ("In the beginning was the byte, and the byte was with the model. " * 2).encode()
    window, overlap = 24, 7
    (whole,) = score_spans(h, [text], window=len(text) + 1)  # fits: one window
    np.testing.assert_allclose(whole.nats / LN2, h.score(text).surprisal, rtol=1e-5, atol=1e-5)
    (windowed,) = score_spans(h, [text], window=window, overlap=overlap)
    expect = np.zeros(len(text))
    for w in plan_windows(len(text), window, overlap):
        part = np.array(h.score(text[w.start:w.end]).surprisal) * LN2  # the window alone, after BOS
        expect[w.first:w.end] = part[w.first - w.start:]
    np.testing.assert_allclose(windowed.nats, expect, rtol=1e-5, atol=1e-6)
    if kind != "entropy":  # (the entropy bundle sees 6 bytes back: nothing to cut; next test)
        assert not np.allclose(windowed.nats, whole.nats, atol=1e-4)  # windows did cut the context


def test_overlap_beyond_the_receptive_field_is_exact(handles):
    """The entropy bundle sees 6 bytes back: windows with 7 bytes of overlap score as the whole."""
    h = handles["entropy"]
    text = ("Bits per byte, windowed or not, agree when the overlap covers what the model sees. " * 2).encode()
    (whole,) = score_spans(h, [text], window=len(text) + 1)
    (windowed,) = score_spans(h, [text], window=20, overlap=7)
    np.testing.assert_allclose(windowed.nats, whole.nats, rtol=1e-5, atol=1e-6)


# ---- bits per byte over sources -------------------------------------------------------------------
def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return str(path)


def test_bits_per_byte_per_source_and_overall(handles, tmp_path):
    h = handles["blt"]
    a = write_jsonl(tmp_path / "a.jsonl", TEXTS[:3] + [""])  # the empty document is skipped
    b = tmp_path / "b.txt"
    b.write_text("Größe matters.\n\nSecond paragraph, plain.", encoding="utf-8")
    rep = evaluate_sources(h, [a, str(b)], max_documents=2, batch_size=2)
    docs = {a: TEXTS[:2], str(b): ["Größe matters.\n\nSecond paragraph, plain."]}
    all_bits, all_bytes = [], []
    for r in rep.sources:
        texts = docs[r.source]
        bits = [sum(h.score(t).surprisal) for t in texts]
        nbytes = [len(t.encode()) for t in texts]
        assert r.documents == len(texts) and r.bytes == sum(nbytes)
        assert r.bits_per_byte == pytest.approx(sum(bits) / sum(nbytes), rel=1e-5)
        all_bits += bits
        all_bytes += nbytes
    assert rep.overall.bits_per_byte == pytest.approx(sum(all_bits) / sum(all_bytes), rel=1e-5)
    assert rep.overall.documents == 3 and rep.sources[1].stderr is None  # one document: no standard error
    assert rep.overall.stderr == pytest.approx(ratio_stderr(np.array(all_bits), np.array(all_bytes)), rel=1e-4)


def test_stderr_of_equal_length_documents_is_the_standard_error_of_their_mean():
    rng = np.random.default_rng(0)
    per_doc_bpb = rng.uniform(1, 3, size=17)
    n = 40
    se = ratio_stderr(per_doc_bpb * n, np.full(17, n))
    assert se == pytest.approx(per_doc_bpb.std(ddof=1) / math.sqrt(17), rel=1e-12)
    # Unequal lengths: the delta-method variance, checked against a direct bootstrap estimate.
    bits, nbytes = rng.uniform(50, 300, size=400), rng.integers(20, 200, size=400).astype(float)
    boot = [bits[i].sum() / nbytes[i].sum() for i in rng.integers(0, 400, size=(4000, 400))]
    assert ratio_stderr(bits, nbytes) == pytest.approx(np.std(boot), rel=0.1)


def test_long_documents_are_windowed(handles, tmp_path):
    h = handles["bytelm"]
    long = "A long document that does not fit in the window, so it is scored in windows. " * 3
    src = write_jsonl(tmp_path / "long.jsonl", [long])
    rep = evaluate_sources(h, [src], window=64, overlap=16)
    (s,) = score_spans(h, [long.encode()], window=64, overlap=16)
    assert rep.sources[0].bytes == len(long.encode())
    assert rep.sources[0].bits_per_byte == pytest.approx(s.total_nats / LN2 / len(long.encode()), rel=1e-9)


# ---- the command line -----------------------------------------------------------------------------
def test_cli_eval_table_and_json(bundles, handles, tmp_path, capsys):
    src = write_jsonl(tmp_path / "d.jsonl", TEXTS)
    assert cli(["eval", "--model", str(bundles["entropy"]), src, "builtin/devil:valid", "--max-docs", "1",
                "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert src in table and "builtin/devil:valid" in table and "\nall " in table
    assert cli(["eval", "--model", str(bundles["entropy"]), src, "--json", "--batch-size", "2"]) == 0
    rec = json.loads(capsys.readouterr().out)
    (r,) = rec["bits_per_byte"]["sources"]
    h = handles["entropy"]
    bits = sum(sum(h.score(t).surprisal) for t in TEXTS)
    assert r["documents"] == len(TEXTS) and r["bytes"] == sum(len(t.encode()) for t in TEXTS)
    assert r["bits_per_byte"] == pytest.approx(bits / r["bytes"], rel=1e-5)
    assert rec["bits_per_byte"]["window"] == 4096 and rec["bits_per_byte"]["overlap"] == 1024


def test_cli_heldout_documents(bundles, capsys):
    # builtin's held-out documents are its fixed valid split.
    assert cli(["eval", "--model", str(bundles["entropy"]), "builtin/devil", "--heldout", "0.1", "--max-docs", "1",
                "--json", "--no-progress"]) == 0
    heldout = json.loads(capsys.readouterr().out)["bits_per_byte"]["overall"]
    assert cli(["eval", "--model", str(bundles["entropy"]), "builtin/devil:valid", "--max-docs", "1", "--json",
                "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["bits_per_byte"]["overall"]["bits"] == pytest.approx(heldout["bits"])


@pytest.mark.parametrize("args, match", [
    ([], "nothing to evaluate"),
    (["nowhere.jsonl"], "data path not found: 'nowhere.jsonl'"),
    (["builtin:valid", "--window", "1"], "window must be"),
    (["builtin:valid", "--window", "64", "--overlap", "63"], "overlap must be"),
    (["builtin:valid", "--batch-size", "0"], "batch_size must be"),
    (["builtin:valid", "--heldout", "1.5"], "heldout fraction"),
    (["builtin/nope:valid"], "no part 'nope'"),
])
def test_cli_bad_input(bundles, args, match, capsys):
    assert cli(["eval", "--model", str(bundles["entropy"]), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert __import__("re").search(match, err), err


def test_cli_empty_source(bundles, tmp_path, capsys):
    src = write_jsonl(tmp_path / "empty.jsonl", ["", ""])
    assert cli(["eval", "--model", str(bundles["entropy"]), src, "--no-progress"]) == 2
    assert "has no documents to score" in capsys.readouterr().err


def test_cli_wrong_bundles(bundles, tmp_path, capsys):
    assert cli(["eval", "--model", str(bundles["blt"] / "entropy_model"), "builtin:valid"]) == 2  # a model, no bundle
    assert "is not a bundle: bundle.yaml is missing" in capsys.readouterr().err
    import shutil

    d = tmp_path / "odd"
    shutil.copytree(bundles["bytelm"], d)
    (d / "bundle.yaml").write_text((d / "bundle.yaml").read_text().replace("kind: bytelm", "kind: tokenizer"))
    assert cli(["eval", "--model", str(d), "builtin:valid"]) == 2
    err = capsys.readouterr().err
    assert "kind" in err and "tokenizer" in err
