"""The inference API: bundles in and out, generate / stream / score / patch, CLI, bad input."""
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bltkit
from bltkit.cli import main as cli
from bltkit.data.vocab import EOS_ID, OFFSET, VOCAB_SIZE, encode
from bltkit.inference.api import Handle
from bltkit.inference.generate import collect, stream_text
from bltkit.inference.sampling import SamplingParams, filtered_probs, sample
from bltkit.model import ByteLatentTransformer, load_blt_config
from bltkit.patching.config import PatcherConfig
from entropy_model.model import EntropyModel, load_entropy_config

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(2)
    blt = ByteLatentTransformer(load_blt_config("tiny", ["hash.vocab=257"]))
    em = EntropyModel(load_entropy_config("tiny", ["dim=32", "n_heads=2"]))
    h = Handle(blt, PatcherConfig(scheme="entropy", threshold=5.45, max_patch_length=8), em, device=CPU)
    d = tmp_path_factory.mktemp("bundle")
    h.save(d)
    return d


@pytest.fixture(scope="module")
def lm(bundle):
    return bltkit.load(bundle, device="cpu")


# ---- a scripted stepper: emits a fixed byte sequence, for the streaming and stop logic ------------
class Scripted:
    def __init__(self, data: bytes, eos: bool = True):
        self.ids = [b + OFFSET for b in data] + ([EOS_ID] if eos else [])

    def _logits(self, n):
        out = torch.zeros(n, VOCAB_SIZE)
        out[:, self.ids[min(self.t, len(self.ids) - 1)]] = 10.0
        return out

    def start(self, prompts):
        self.t, self.n = 0, len(prompts)
        return self._logits(self.n)

    def step(self, ids, live):
        self.t += 1
        return self._logits(ids.shape[0])


def test_stream_never_splits_utf8_and_joins_to_text():
    text = "日本語のテキスト 😀👍🏽 café"
    pieces = list(stream_text(Scripted(text.encode()), [1], 200, SamplingParams(), 0))
    assert "".join(pieces) == text
    assert len(pieces) > 5
    for p in pieces:
        assert "\ufffd" not in p  # every piece is whole characters


@settings(max_examples=80, deadline=None)
@given(data=st.binary(max_size=40), stop=st.lists(st.binary(min_size=1, max_size=3), max_size=2),
       max_new=st.integers(1, 45))
def test_stream_equals_generate_on_any_bytes(data, stop, max_new):
    """Arbitrary (also invalid) UTF-8, stop strings and lengths: the joined pieces are the text."""
    params = SamplingParams()
    whole = collect(Scripted(data), [[1]], max_new, params, [0], stop)[0]
    pieces = list(stream_text(Scripted(data), [1], max_new, params, 0, stop))
    assert "".join(pieces) == whole.text
    assert whole.text == whole.bytes.decode("utf-8", errors="replace")
    for s in stop:
        assert s not in whole.bytes


def test_stop_string_and_reasons():
    params = SamplingParams()
    g = collect(Scripted(b"hello world. more"), [[1]], 100, params, [0], [b". "])[0]
    assert (g.bytes, g.stop_reason) == (b"hello world", "stop")
    g = collect(Scripted(b"abc"), [[1]], 100, params, [0])[0]
    assert (g.bytes, g.stop_reason, g.new_ids) == (b"abc", "eos", 4)
    g = collect(Scripted(b"abcdef"), [[1]], 3, params, [0])[0]
    assert (g.bytes, g.stop_reason) == (b"abc", "length")


def test_sampling_filters_and_seeds():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 2.5]])
    p = filtered_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    assert (p > 0).tolist() == [[False, False, False, True, True]]
    p = filtered_probs(logits, SamplingParams(temperature=1.0, top_p=0.5))
    full = torch.softmax(logits, -1)[0]
    keep = (p[0] > 0).nonzero().flatten().tolist()
    assert keep == [3, 4] and float(full[3]) < 0.5 <= float(full[3] + full[4])
    from bltkit.inference.sampling import row_generators

    assert sample(logits, SamplingParams()).tolist() == [3]  # greedy
    hot = SamplingParams(temperature=5.0)
    gens = row_generators([7])
    seq1 = [int(sample(logits, hot, gens)[0]) for _ in range(30)]
    gens = row_generators([7])
    seq2 = [int(sample(logits, hot, gens)[0]) for _ in range(30)]
    assert seq1 == seq2 and len(set(seq1)) > 2  # reproducible, and really sampling


# ---- the handle on a real bundle --------------------------------------------------------------------
def test_generate_single_batch_bytes_details(lm):
    """One prompt, a batch, bytes and details agree; each stop reason is the one its input gives."""
    det = lm.generate(["The "], max_new_bytes=24, temperature=1.0, seed=0, details=True)[0]
    # No EOS among 24 sampled ids: the budget ends the row, and a larger budget continues it.
    assert (det.stop_reason, det.new_ids, len(det.bytes)) == ("length", 24, 24)
    longer = lm.generate("The ", max_new_bytes=48, temperature=1.0, seed=0, details=True)
    assert longer.bytes[:24] == det.bytes and len(longer.bytes) > 24
    one = lm.generate("The ", max_new_bytes=24, temperature=1.0, seed=0)
    assert one == det.bytes.decode("utf-8", errors="replace") == det.text
    assert lm.generate("The ", max_new_bytes=24, temperature=1.0, seed=0, return_bytes=True) == det.bytes
    many = lm.generate(["The ", "", "日本"], max_new_bytes=24, temperature=1.0, seed=0)
    assert many[0] == one and len(many) == 3 and len(set(many)) == 3
    assert lm.generate("The ", max_new_bytes=24, temperature=1.0, seed=0, use_cache=False) == one
    # A stop string met at byte 8: the text is cut before it.
    cut = lm.generate("The ", max_new_bytes=24, temperature=1.0, seed=0, stop=[det.bytes[8:11]], details=True)
    assert (cut.stop_reason, cut.bytes) == ("stop", det.bytes[:8])
    # Seed 3 samples EOS first: no bytes, and the same whatever the budget.
    for budget in (24, 48):
        eos = lm.generate("The ", max_new_bytes=budget, temperature=1.0, seed=3, details=True)
        assert (eos.stop_reason, eos.new_ids, eos.bytes) == ("eos", 1, b"")


def test_stream_matches_generate_on_the_model(lm):
    kw = dict(max_new_bytes=60, temperature=1.0, seed=11)
    assert "".join(lm.stream("日本語 ", **kw)) == lm.generate("日本語 ", **kw)


def test_save_load_roundtrip(lm, tmp_path):
    lm.save(tmp_path / "again")
    again = bltkit.load(tmp_path / "again", device="cpu")
    assert again.patcher.threshold == lm.patcher.threshold and again.patcher.max_patch_length == 8
    kw = dict(max_new_bytes=20, temperature=1.0, seed=5)
    assert again.generate("x", **kw) == lm.generate("x", **kw)


def test_calibrated_threshold_fills_the_bundle(bundle, tmp_path):
    import shutil

    import yaml

    from bltkit.patching.config import save_patcher_settings

    d = tmp_path / "b"
    shutil.copytree(bundle, d)
    meta = yaml.safe_load((d / "bundle.yaml").read_text())
    del meta["patcher"]["threshold"]
    (d / "bundle.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(ValueError, match="threshold"):
        bltkit.load(d, device="cpu")
    save_patcher_settings(d / "entropy_model", PatcherConfig(scheme="entropy", threshold=4.25))
    assert bltkit.load(d, device="cpu").patcher.threshold == 4.25


def test_score_matches_forward(lm):
    s = lm.score("hello")
    assert len(s.surprisal) == 5 and sum(s.patch_lengths) == 6
    ids = torch.tensor([encode("hello", eos=False)])
    with torch.no_grad():
        logits = lm.model(ids[:, :-1], torch.tensor([s.patch_lengths]))
    nats = torch.nn.functional.cross_entropy(logits[0], ids[0, 1:], reduction="sum")
    assert s.bits_per_byte == pytest.approx(float(nats) / math.log(2) / 5, rel=1e-5)
    assert len(lm.score("hello", eos=True).surprisal) == 6


def test_patch_view(lm):
    p = lm.patch("hello world, 日本")
    assert b"".join(p.pieces) == "hello world, 日本".encode()
    assert p.pieces[0] == b"" and p.lengths[0] == 1 and sum(p.lengths) == 1 + len("hello world, 日本".encode())
    assert len(p.entropies) == sum(p.lengths) and max(p.lengths) <= 8


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    (dict(max_new_bytes=0), "max_new_bytes"),
    (dict(temperature=-0.5), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(stop=[""]), "stop"),
])
def test_bad_generation_arguments(lm, kw, match):
    with pytest.raises(ValueError, match=match):
        lm.generate("x", **kw)


def test_empty_prompt_and_too_long_prompt(lm, bundle):
    empty = lm.generate("", max_new_bytes=4, details=True)  # BOS alone: a prompt like any other
    assert (empty.stop_reason, empty.new_ids) == ("length", 4) and len(empty.bytes) == 4
    assert lm.generate("", max_new_bytes=4, use_cache=False) == empty.text
    with pytest.raises(ValueError, match="no prompt"):
        lm.generate([], max_new_bytes=4)
    short = bltkit.load(bundle, device="cpu", max_context=32)
    with pytest.raises(ValueError, match="max_context 32"):
        short.generate("y" * 30, max_new_bytes=4)
    with pytest.raises(ValueError, match="prompt 1 must be str or bytes"):
        lm.generate(["ok", 5], max_new_bytes=4)


def test_bad_bundles(bundle, tmp_path):
    import shutil

    with pytest.raises(FileNotFoundError, match="bundle directory not found"):
        bltkit.load(tmp_path / "nothing")
    d = tmp_path / "no_model"
    shutil.copytree(bundle, d)
    shutil.rmtree(d / "model")
    with pytest.raises(FileNotFoundError, match="model"):
        bltkit.load(d, device="cpu")
    d = tmp_path / "no_em"
    shutil.copytree(bundle, d)
    shutil.rmtree(d / "entropy_model")
    with pytest.raises(FileNotFoundError, match="entropy_model"):
        bltkit.load(d, device="cpu")
    d = tmp_path / "pickle"
    shutil.copytree(bundle, d)
    (d / "model" / "model.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors"):
        bltkit.load(d, device="cpu")
    d = tmp_path / "shapes"
    shutil.copytree(bundle, d)
    other = ByteLatentTransformer(load_blt_config("tiny", ["hash.vocab=257", "encoder.dim=32", "decoder.dim=32"]))
    other.save_pretrained(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "model.safetensors", d / "model" / "model.safetensors")
    with pytest.raises(ValueError, match="shape"):
        bltkit.load(d, device="cpu")


# ---- CLI and bench --------------------------------------------------------------------------------
def test_cli_generate_json_and_score(bundle, capsys):
    args = ["generate", "--model", str(bundle), "--max-new-bytes", "12", "--temperature", "1", "--seed", "4", "--json"]
    assert cli(args + ["a", "bb"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["prompt"] for x in lines] == ["a", "bb"] and all("text" in x for x in lines)
    assert cli(args + ["--no-cache", "a", "bb"]) == 0
    assert [json.loads(x)["text"] for x in capsys.readouterr().out.strip().splitlines()] == [x["text"] for x in lines]
    assert cli(["score", "--model", str(bundle), "--json", "hello"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert len(rec["surprisal_bits"]) == 5 and rec["bits_per_byte"] > 0
    assert cli(["generate", "--model", str(bundle), "--max-new-bytes", "0", "x"]) == 2
    assert "max_new_bytes" in capsys.readouterr().err


class _EosAt:
    """A stepper whose greedy choice is byte 'a' except EOS at the third step."""

    def __init__(self):
        self.n = 0

    def _logits(self, b):
        out = torch.zeros(b, VOCAB_SIZE)
        out[:, EOS_ID if self.n == 2 else OFFSET + ord("a")] = 1.0
        self.n += 1
        return out

    def start(self, prompts):
        return self._logits(len(prompts))

    def step(self, ids, live):
        return self._logits(ids.shape[0])


def test_compile_takes_true_or_max_autotune_and_names_anything_else(lm):
    for bad in ("max_autotune", 1, "inductor"):
        with pytest.raises(ValueError, match=f"compile must be False, True or 'max-autotune', got {bad!r}"):
            lm.generate("x", max_new_bytes=2, compile=bad)
        with pytest.raises(ValueError, match="compile must be"):
            next(lm.stream("x", max_new_bytes=2, compile=bad))


def test_ignore_eos_feeds_eos_back_and_ends_no_row():
    from bltkit.inference.generate import decode_loop

    plain = list(decode_loop(_EosAt(), [[1]], 6, SamplingParams(), [0]))
    assert [t for _, t, _ in plain] == [OFFSET + 97, OFFSET + 97, EOS_ID] and plain[-1][2] == "eos"
    kept = list(decode_loop(_EosAt(), [[1]], 6, SamplingParams(), [0], ignore_eos=True))
    assert [t for _, t, _ in kept] == [OFFSET + 97] * 2 + [EOS_ID] + [OFFSET + 97] * 3
    assert [f for _, _, f in kept] == [None] * 5 + ["length"]


def test_generation_benchmark(lm):
    from bltkit.inference.bench import generation_benchmark

    rec = generation_benchmark(lm, batch=2, prompt_len=16, new_bytes=6, uncached_new_bytes=3,
                               paths=("eager", "compiled", "speculative", "compiled_speculative"), draft=3,
                               compile_backend="eager")
    # EOS ends no row in a benchmark: 2 rows x 6 bytes, on every path.
    assert rec["new_bytes"] == 12 and rec["bytes_per_s"] > 0 and rec["ttfb_s"] <= rec["seconds"]
    assert rec["decode_bytes_per_s"] == pytest.approx((12 - 2) / (rec["seconds"] - rec["ttfb_s"]))
    assert rec["uncached_bytes_per_s"] > 0 and rec["speedup"] == pytest.approx(rec["bytes_per_s"] / rec["uncached_bytes_per_s"])
    paths = rec["paths"]
    assert paths["eager"]["dispatches_per_byte"] > 100  # a real profile: hundreds of ATen calls a byte
    for name in ("compiled", "speculative", "compiled_speculative"):
        assert paths[name]["new_bytes"] == rec["new_bytes"]
        assert paths[name]["over_eager"] == pytest.approx(paths[name]["bytes_per_s"] / rec["bytes_per_s"])
    for name in ("speculative", "compiled_speculative"):  # the same drafts, compiled or not
        spec = paths[name]
        assert spec["draft"] == 3 and spec["bytes_per_global_call"] >= 1
        assert spec["acceptance_rate"] is None or 0 <= spec["acceptance_rate"] <= 1
    assert paths["compiled_speculative"]["acceptance_rate"] == paths["speculative"]["acceptance_rate"]
