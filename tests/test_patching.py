"""Patching schemes (docs/reference-semantics.md §4): the worked example, edge rules, invariants on random bytes."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from bltkit.data.vocab import BOS_ID, EOS_ID, OFFSET
from bltkit.patching.config import PatcherConfig, load_patcher_settings, save_patcher_settings
from bltkit.patching.lengths import decoder_patch_ids, patch_ids_from_lengths, validate_patch_lengths
from bltkit.patching.patcher import Patcher

H_EXAMPLE = torch.tensor([[2.0, 0.5, 3.0, 0.2, 0.1, 2.5, 0.3, 1.9]])


def _ids(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(OFFSET, 260, (1, n), generator=g)


def test_worked_example_reference_3_2():
    p = Patcher(scheme="entropy", threshold=1.335)
    ids = _ids(8)
    res = p(ids, include_next_token=True, scores=H_EXAMPLE)
    assert res.patch_lengths.tolist() == [[1, 2, 3, 2, 1]]
    pl = res.patch_lengths
    assert patch_ids_from_lengths(pl, 8).tolist() == [[0, 1, 1, 2, 2, 2, 3, 3]]
    assert decoder_patch_ids(pl, 8).tolist() == [[0, 0, 1, 1, 1, 2, 2, 3]]
    assert torch.equal(res.scores, H_EXAMPLE.half().float())  # thresholded as float16 (entropies_fp16)
    exact = Patcher(scheme="entropy", threshold=1.335, entropies_fp16=False)(ids, include_next_token=True, scores=H_EXAMPLE)
    assert torch.equal(exact.scores, H_EXAMPLE) and torch.equal(exact.patch_lengths, res.patch_lengths)
    assert p(ids, include_next_token=False, scores=H_EXAMPLE).patch_lengths.tolist() == [[1, 2, 3, 2]]


def test_global_threshold_is_strict_and_h0_ignored():
    h = torch.tensor([[9.0, 1.0, 1.0, 1.0]])
    # H_1 == θ does not start byte 2; H_0 never counts
    assert Patcher(scheme="entropy", threshold=1.0)(_ids(4), False, scores=h).rows() == [[1, 3]]
    assert Patcher(scheme="entropy", threshold=0.999)(_ids(4), False, scores=h).rows() == [[1, 1, 1, 1]]


def test_monotonic_edge_rules():
    # position 2 always starts (second patch length 1); then H[c-1] - H[c-2] > θ
    res = Patcher(scheme="monotonic", threshold=0.5)(_ids(8), True, scores=H_EXAMPLE)
    assert res.rows() == [[1, 1, 1, 3, 2, 1]]
    flat = torch.full((1, 6), 3.0)
    assert Patcher(scheme="monotonic", threshold=0.0)(_ids(6), False, scores=flat).rows() == [[1, 1, 4]]
    # negative relative thresholds are allowed: equal entropies then start every byte
    assert Patcher(scheme="monotonic", threshold=-0.1)(_ids(6), False, scores=flat).rows() == [[1] * 6]


def test_global_and_monotonic_edge_rules():
    # 0, 1, 2 always; 3 never (even with a huge rise); c >= 4 needs both tests
    h = torch.tensor([[0.0, 0.0, 5.0, 0.0, 5.0, 5.1, 9.0]])
    res = Patcher(scheme="entropy", threshold=1.0, threshold_add=0.5)(_ids(7), True, scores=h)
    # c=3: forced no; c=4: H3-H2 = -5 no; c=5: H4-H3 = 5 and H4 = 5 > 1 yes; c=6: 0.1 no; c=7: 3.9 yes
    assert res.rows() == [[1, 1, 3, 2, 1]]
    assert Patcher(scheme="entropy", threshold=1.0, threshold_add=0.5)(_ids(3), True, scores=h[:, :3]).rows() == [[1, 1, 2]]


def test_space_rule():
    res = Patcher(scheme="space")("Hello, world! 12ab  \u00e9", include_next_token=False)
    # BOS | Hello, | " world!" | " 12ab " | " é" : first of each space-like run marks, é's lead byte
    # follows a space (its run), its continuation byte is not space-like
    assert res.rows() == [[1, 6, 7, 6, 3]]
    with_next = Patcher(scheme="space")("ab ", include_next_token=True).rows()
    assert with_next == [[1, 3, 1]]  # the space (last byte) marks: the next byte starts a patch


def test_static_and_byte_and_max_length():
    assert Patcher(scheme="static", patch_size=3)("abcdefgh", False).rows() == [[1, 3, 3, 2]]
    assert Patcher(scheme="static", patch_size=3)("abcdefgh", True).rows() == [[1, 3, 3, 3]]
    assert Patcher(scheme="byte")("abc", True).rows() == [[1, 1, 1, 1, 1]]
    assert Patcher(scheme="static", patch_size=7, max_patch_length=3)("abcdefghijk", False).rows() == [[1, 3, 3, 1, 3, 1]]
    low = torch.zeros(1, 12)  # nothing exceeds θ: BOS, then one 11-id patch split 5, 5, 1 in order
    assert Patcher(scheme="entropy", threshold=1.0, max_patch_length=5)(_ids(12), False, scores=low).rows() == [[1, 5, 5, 1]]


def test_empty_and_tiny_rows():
    for scheme in ("static", "space", "byte"):
        p = Patcher(scheme=scheme)
        empty = p([torch.zeros(0, dtype=torch.int64)], include_next_token=False)
        assert empty.patch_lengths.shape == (1, 0)
        assert p([torch.zeros(0, dtype=torch.int64)], include_next_token=True).rows() == [[1]]
        assert p([torch.tensor([BOS_ID])], include_next_token=True).rows() == [[1, 1]]
    e = Patcher(scheme="entropy", threshold=1.0)([torch.zeros(0, dtype=torch.int64)], False, scores=[torch.zeros(0)])
    assert e.patch_lengths.shape == (1, 0)


def _check_invariants(pl, lengths, inc, max_len=None):
    for r, n in zip(pl.tolist(), lengths):
        nz = [v for v in r if v > 0]
        assert r[: len(nz)] == nz, f"zero before non-zero in {r}"
        assert sum(nz) == n + inc
        if n + inc > 0:
            assert nz[0] == 1
        if max_len is not None:
            assert max(nz, default=0) <= max_len
        assert all(v >= 1 for v in nz)


SCHEME_CASES = [
    dict(scheme="entropy", threshold=2.0),
    dict(scheme="entropy", threshold=2.0, threshold_add=0.3),
    dict(scheme="monotonic", threshold=0.2),
    dict(scheme="static", patch_size=3),
    dict(scheme="space"),
    dict(scheme="byte"),
]


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=4),
    case=st.sampled_from(range(len(SCHEME_CASES))),
    max_len=st.one_of(st.none(), st.integers(1, 6)),
    inc=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_invariants_and_batch_independence(rows, case, max_len, inc, seed):
    ids = [torch.tensor([BOS_ID] + [b + OFFSET for b in r] + [EOS_ID]) for r in rows]
    g = torch.Generator().manual_seed(seed)
    scores = [torch.rand(x.numel(), generator=g) * 4 for x in ids]
    p = Patcher(**SCHEME_CASES[case], max_patch_length=max_len)
    res = p(ids, include_next_token=inc, scores=scores)
    lengths = [x.numel() for x in ids]
    _check_invariants(res.patch_lengths, lengths, int(inc), max_len)
    if inc or len(ids) == 1:
        validate_patch_lengths(res.patch_lengths[:1, : len(res.rows()[0])], lengths[0], extra=int(inc))
    # a row alone == the same row in any batch (and in reversed order)
    for i, x in enumerate(ids):
        alone = p([x], include_next_token=inc, scores=[scores[i]]).rows()[0]
        assert alone == res.rows()[i]
    rev = p(ids[::-1], include_next_token=inc, scores=scores[::-1]).rows()
    assert rev[::-1] == res.rows()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), t1=st.floats(0, 4), dt=st.floats(0, 4), seed=st.integers(0, 2**16))
def test_raising_global_threshold_never_adds_patches(n, t1, dt, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.rand(1, n, generator=g) * 5
    ids = _ids(n, seed)
    lo = Patcher(scheme="entropy", threshold=t1)(ids, True, scores=h).rows()[0]
    hi = Patcher(scheme="entropy", threshold=t1 + dt)(ids, True, scores=h).rows()[0]
    assert len(hi) <= len(lo)
    # the high-θ starts are a subset of the low-θ starts
    starts = lambda ls: set(torch.tensor([0] + ls[:-1]).cumsum(0).tolist())
    assert starts(hi) <= starts(lo)


def test_scorer_module_plugs_in_and_padded_tensor_equals_ragged():
    class Bigram(torch.nn.Module):  # any module giving next-byte logits works as a scorer
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(260, 260)

        def forward(self, ids):
            return self.table(ids)

    p = Patcher(scheme="entropy", threshold=5.0, scorer=Bigram())
    a, b = _ids(30, 1)[0], _ids(11, 2)[0]
    ragged = p([a, b], include_next_token=True)
    assert ragged.scores.shape == (2, 30)
    assert [sum(r) for r in ragged.rows()] == [31, 12]
    assert p(a[None], include_next_token=True).rows()[0] == ragged.rows()[0]
    assert torch.allclose(p(a[None]).scores[0], ragged.scores[0], atol=1e-5)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="threshold must be finite"):
        Patcher(scheme="entropy", threshold=math.nan)
    with pytest.raises(ValueError, match="-1"):
        Patcher(scheme="entropy", threshold=-1.0)
    with pytest.raises(ValueError, match="finite"):
        Patcher(scheme="monotonic", threshold=math.inf)
    with pytest.raises(ValueError, match="max_patch_length"):
        Patcher(scheme="byte", max_patch_length=0)
    with pytest.raises(ValueError, match="patch_size"):
        Patcher(scheme="static", patch_size=0)
    with pytest.raises(ValueError, match="needs a threshold"):
        Patcher(scheme="entropy")(_ids(4))
    with pytest.raises(ValueError, match="scorer"):
        Patcher(scheme="entropy", threshold=1.0)(_ids(4))
    with pytest.raises(ValueError, match="do not match"):
        Patcher(scheme="entropy", threshold=1.0)([_ids(4)[0]], scores=[torch.zeros(3)])
    with pytest.raises(ValueError, match="NaN"):
        Patcher(scheme="entropy", threshold=1.0)(_ids(3), scores=torch.tensor([[0.0, math.nan, 1.0]]))
    with pytest.raises(ValueError, match="300"):
        Patcher(scheme="byte")(torch.tensor([[1, 300]]))
    with pytest.raises(ValueError, match="unknown patcher settings"):
        Patcher(scheme="byte", treshold=1.0)


def test_patcher_settings_roundtrip(tmp_path):
    assert load_patcher_settings(tmp_path) is None
    save_patcher_settings(tmp_path, PatcherConfig(scheme="monotonic", threshold=-0.25, max_patch_length=8))
    cfg = load_patcher_settings(tmp_path)
    assert (cfg.scheme, cfg.threshold, cfg.max_patch_length) == ("monotonic", -0.25, 8)
    (tmp_path / "patcher.yaml").write_text("scheme: entropy\nthreshold: -2\n")
    with pytest.raises(ValueError, match="-2"):
        load_patcher_settings(tmp_path)


def test_plot_writes_png_and_explains_missing_matplotlib(tmp_path, monkeypatch):
    import sys

    from bltkit.patching.plot import plot_patches

    out = tmp_path / "p.png"
    plot_patches(out, [1.0, 3.0, 0.5, 2.0], [1, 3], threshold=1.5, text=b"abcd")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install"):
        plot_patches(tmp_path / "q.png", [1.0], [1])
