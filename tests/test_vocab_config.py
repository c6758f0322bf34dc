"""Byte vocabulary and typed config loading."""
import dataclasses
from typing import Optional

import pytest
import torch
from hypothesis import given, strategies as st

from bltkit import config as cfgio
from bltkit.data import vocab
from bltkit.model import load_blt_config


@given(st.binary(max_size=200))
def test_bytes_round_trip_any_bytes(b):
    ids = vocab.encode(b)
    assert ids[0] == vocab.BOS_ID and ids[-1] == vocab.EOS_ID
    assert all(4 <= i < 260 for i in ids[1:-1])
    assert vocab.decode_bytes(ids) == b
    assert vocab.encode_tensor(b).tolist() == ids


@given(st.text(max_size=100))
def test_text_round_trip(s):
    assert vocab.decode(vocab.encode(s, bos=False, eos=False)) == s


def test_ids_layout():
    assert vocab.VOCAB_SIZE == 260
    assert vocab.encode(b"\x00\xff", bos=False, eos=False) == [4, 259]
    assert vocab.decode([1, 4 + ord("a"), 2, 4 + ord("b")], cut_at_eos=True) == "a"


def test_check_ids_names_position():
    with pytest.raises(ValueError, match=r"id 260 at position \(0, 2\)"):
        vocab.check_ids(torch.tensor([[1, 5, 260]]))


@given(st.text(max_size=40))
def test_utf8_prefix_never_splits(s):
    b = s.encode()
    for cut in range(len(b) + 1):
        k = vocab.utf8_complete_prefix(b[:cut])
        b[:k].decode("utf-8")  # never raises
        assert k >= cut - 3


@dataclasses.dataclass
class _Inner:
    a: int = 1
    b: Optional[float] = None


@dataclasses.dataclass
class _Outer:
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    name: str = "x"


def test_unknown_key_named_with_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("inner: {a: 2, c: 3}\n")
    with pytest.raises(cfgio.ConfigError, match=r"unknown key 'inner.c' in .*c.yaml"):
        cfgio.load(_Outer, p)


def test_wrong_type_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("inner: {a: two}\n")
    with pytest.raises(cfgio.ConfigError, match=r"'inner.a' in .*c.yaml: expected an integer"):
        cfgio.load(_Outer, p)


def test_overrides_and_round_trip(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: y\n")
    c = cfgio.load(_Outer, p, overrides=["inner.b=0.5", "inner.a=7"])
    assert c.inner.a == 7 and c.inner.b == 0.5 and c.name == "y"
    assert cfgio.from_dict(_Outer, cfgio.to_dict(c)) == c


def test_model_config_typo_names_key_and_file(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("encoder: {dim: 64, n_layerz: 1}\n")
    with pytest.raises(cfgio.ConfigError, match=r"'encoder.n_layerz' in .*m.yaml"):
        load_blt_config(p)
    p.write_text("global_model: {dim: 64, n_heads: three}\n")
    with pytest.raises(cfgio.ConfigError, match=r"'global_model.n_heads' in .*m.yaml"):
        load_blt_config(p)
    p.write_text("encoder: {dim: 64}\ndecoder: {dim: 32}\n")
    with pytest.raises(cfgio.ConfigError, match="decoder.dim"):
        load_blt_config(p)
