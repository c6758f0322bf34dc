"""Self-speculative decoding (BLT-S): greedy output identical to plain greedy decoding, under
every patching scheme, for one row and a ragged batch; bad input named clearly.

A random tiny model with the EOS row of its output head zeroed: its EOS logit is then 0 while
some of the other 259 are positive, so greedy never stops early and every run is >= 512 bytes.
"""
import pytest
import torch

from bltkit.cli import main as cli
from bltkit.data.vocab import EOS_ID, encode
from bltkit.inference.api import Handle
from bltkit.nn.kv_cache import RING_MARGIN
from bltkit.inference.generate import collect
from bltkit.inference.sampling import SamplingParams
from bltkit.inference.speculative import SpeculativeStepper
from bltkit.inference.stepper import CachedStepper
from bltkit.model import ByteLatentTransformer, load_blt_config
from bltkit.patching.config import PatcherConfig
from entropy_model.model import EntropyModel, load_entropy_config

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(3)
    blt = ByteLatentTransformer(load_blt_config("tiny", ["encoder.window=48", "decoder.window=48", "hash.vocab=257",
                                                         "global_model.n_layers=1"])).eval()
    with torch.no_grad():
        blt.local_decoder.output.weight[EOS_ID] = 0
    em = EntropyModel(load_entropy_config("tiny", ["window=32", "dim=32", "n_heads=2", "n_layers=1"])).eval()
    return blt, em


SCHEMES = [  # (patcher, draft length)
    (PatcherConfig(scheme="entropy", threshold=5.52, max_patch_length=6), 4),
    (PatcherConfig(scheme="space"), 3),
    (PatcherConfig(scheme="static", patch_size=4), 6),
    (PatcherConfig(scheme="byte"), 2),
]


@pytest.mark.parametrize("cfg,draft", SCHEMES, ids=[c.scheme for c, _ in SCHEMES])
def test_speculative_greedy_equals_greedy_512_bytes(models, cfg, draft):
    blt, em = models
    prompts = [encode("The cat sat", eos=False), encode("", eos=False), encode("a ragged batch row", eos=False)]
    greedy = SamplingParams()
    plain = collect(CachedStepper(blt, cfg, em, 560, CPU), prompts, 512, greedy, [0] * 3)
    spec = SpeculativeStepper(blt, cfg, em, 560, CPU, draft=draft)
    fast = collect(spec, prompts, 512, greedy, [0] * 3)
    for p, f in zip(plain, fast):
        assert p.new_ids == 512 and f.bytes == p.bytes
    one = SpeculativeStepper(blt, cfg, em, 560, CPU, draft=draft)
    assert collect(one, prompts[:1], 512, greedy, [0])[0].bytes == plain[0].bytes  # batch 1
    st = one.stats
    patches = int(one.cache.n_closed[0])
    assert st["drafted"] > 0 and 0 <= st["accepted"] <= st["drafted"]
    # One global call verifies the patches of a whole draft: fewer calls than patches.
    assert st["global_calls"] <= patches
    if st["accepted"]:
        assert st["global_calls"] < patches


@pytest.mark.parametrize("cfg,draft", [SCHEMES[0], SCHEMES[2]], ids=["entropy", "static"])
def test_compiled_speculative_greedy_equals_greedy(models, cfg, draft):
    """With ``compile``, every byte fed goes through the compiled split step's two graphs
    (``fullgraph=True``: a graph break fails), the global model only in the eager verification,
    and the output is still plain greedy's, for a ragged batch and for one row."""
    blt, em = models
    prompts = [encode("The cat sat", eos=False), encode("", eos=False), encode("a ragged batch row", eos=False)]
    greedy = SamplingParams()
    plain = collect(CachedStepper(blt, cfg, em, 560, CPU), prompts, 512, greedy, [0] * 3)
    for rows in (prompts, prompts[:1]):
        spec = SpeculativeStepper(blt, cfg, em, 560, CPU, draft=draft, compile="eager")
        assert spec.split
        calls = {"encode": 0, "decode": 0}
        front, back = spec._front_fn, spec._back_fns[0]

        def counted(name, fn):
            def run(*args):
                calls[name] += 1
                return fn(*args)
            return run

        spec._front_fn, spec._back_fns = counted("encode", front), (counted("decode", back), None)
        fast = collect(spec, rows, 512, greedy, [0] * len(rows))
        assert [f.bytes for f in fast] == [p.bytes for p in plain[:len(rows)]]
        assert calls["encode"] == calls["decode"] > 0  # every byte fed went through both graphs
        assert spec.stats["accepted"] > 0
        if len(rows) == 1:  # one row: each drafted byte is one call of each; fewer global calls than patches
            assert calls["encode"] >= spec.stats["drafted"]
            assert spec.stats["global_calls"] < int(spec.cache.n_closed[0])


def test_speculative_bad_input_is_named(models, tmp_path, capsys):
    blt, em = models
    h = Handle(blt, PatcherConfig(scheme="space"), em, device=CPU)
    for bad in (0, -2, 1.5, "4", RING_MARGIN + 1):
        with pytest.raises(ValueError, match=f"draft length must be a whole number from 1 to {RING_MARGIN} .*got {bad!r}"):
            h.generate("x", max_new_bytes=4, speculative=bad)
    with pytest.raises(ValueError, match=r"speculative=3 does not combine with temperature=0.7 \(speculative decoding is greedy only\)"):
        h.generate("x", max_new_bytes=4, speculative=3, temperature=0.7)
    with pytest.raises(ValueError, match="speculative=True does not combine with use_cache=False"):
        h.generate("x", max_new_bytes=4, speculative=True, use_cache=False)
    with pytest.raises(ValueError, match="compile must be"):
        h.stream("x", max_new_bytes=4, speculative=2, compile=1.5)
    assert h.generate("ab", max_new_bytes=20, speculative=True) == h.generate("ab", max_new_bytes=20)
    compiled = h._stepper(True, [encode("ab", eos=False)], 20, None, speculative=2, compile=True)
    assert isinstance(compiled, SpeculativeStepper) and compiled.split  # combines (compiled lazily, not here)
    h.save(tmp_path / "b")
    assert cli(["generate", "--model", str(tmp_path / "b"), "--speculative", "0", "hi"]) == 2
    assert f"draft length must be a whole number from 1 to {RING_MARGIN} (or True), got 0" in capsys.readouterr().err
    assert cli(["generate", "--model", str(tmp_path / "b"), "--speculative", "3", "--max-new-bytes", "8", "hi"]) == 0
