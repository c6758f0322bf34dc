"""Parity with Hugging Face transformers' BLT (pinned 5.17.0) through ``bltkit convert``.

A tiny ``BltForCausalLM`` with random weights (norm weights randomised too, so a swapped norm
cannot hide) is saved, converted with the CLI, and must give the same logits in bltkit; the
``--to hf`` direction must load in transformers with every tensor used and give the same logits
again. A last group documents docs/reference-semantics.md §16: bltkit's reference defaults (512 window, EOS
reset, block-causal global) differ from HF exactly where those semantics differ.
"""
import json
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from transformers import BltConfig, BltForCausalLM  # the `hf` extra (dev/test dependency)

from bltkit.bundle import read_bundle
from bltkit.cli import main
from bltkit.interop.hf import blt_to_hf_name, hf_config_to_blt, hf_to_blt_name
from bltkit.model import ByteLatentTransformer
from bltkit.patching import PatcherConfig

warnings.filterwarnings("ignore", message=".*flex_attention.*")
TOL = 1e-4

# Two shapes: the 1B layout (one encoder layer, one encoder cross step) and a multi-layer encoder
# that cross-attends after every layer (HF re-pools each time), with GQA in the global model, k=3,
# two hash functions, non-default RoPE thetas and FFN widths off the reference rounding.
HF_SHAPES = {
    "1b-like": dict(
        cross_attn_k=2, encoder_hash_byte_group_size=[3, 4, 5], encoder_hash_byte_group_vocab=97,
        encoder_hash_byte_group_nb_functions=1,
        encoder_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, hidden_size_global=64,
                            intermediate_size=96, cross_attn_all_layers=False, cross_attn_k=2),
        decoder_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, hidden_size_global=64,
                            intermediate_size=96, cross_attn_all_layers=True, cross_attn_k=2),
        global_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=192),
    ),
    "repool-gqa-k3": dict(
        cross_attn_k=3, encoder_hash_byte_group_size=[2, 4], encoder_hash_byte_group_vocab=61,
        encoder_hash_byte_group_nb_functions=2,
        encoder_config=dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=3, hidden_size_global=48,
                            intermediate_size=40, cross_attn_all_layers=True, cross_attn_k=3,
                            rope_parameters={"rope_type": "default", "rope_theta": 1000.0}),
        decoder_config=dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=3, hidden_size_global=48,
                            intermediate_size=40, cross_attn_all_layers=False, cross_attn_k=3,
                            rope_parameters={"rope_type": "default", "rope_theta": 20000.0}),
        global_config=dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=80),  # k*De = 72 != 48: global input projection present
    ),
}


def build_hf(shape: str, seed: int = 0) -> BltForCausalLM:
    """A tiny fp32 BltForCausalLM on CPU with every weight random (norms included)."""
    torch.manual_seed(seed)
    cfg = BltConfig(vocab_size=260, patch_in_forward=False, use_cache=False, **HF_SHAPES[shape])
    # transformers 5.17's DynamicCache reads a top-level num_hidden_layers, which BltConfig lacks
    cfg.num_hidden_layers = cfg.decoder_config.num_hidden_layers
    model = BltForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norm weights: 1 at init, randomised so a swap shows
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return model


def make_batch(rows: list[list[int]], ids_rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    p = max(len(r) for r in rows)
    pl = torch.zeros(len(rows), p, dtype=torch.long)
    for i, r in enumerate(rows):
        pl[i, : len(r)] = torch.tensor(r)
    return torch.tensor(ids_rows), pl


def random_lengths(n: int, g: torch.Generator, max_len: int = 7) -> list[int]:
    """Reference convention: first patch 1 byte, the rest sum to n (total n + 1)."""
    lens, left = [1], n
    while left > 0:
        lens.append(min(left, int(torch.randint(1, max_len + 1, (1,), generator=g))))
        left -= lens[-1]
    return lens


def random_ids(n: int, g: torch.Generator, eos_at: tuple = ()) -> list[int]:
    ids = torch.randint(4, 260, (n,), generator=g)
    ids[0] = 1
    for t in eos_at:
        ids[t] = 2
        if t + 1 < n:
            ids[t + 1] = 1
    return ids.tolist()


def parity_batches(n: int = 40):
    """Random lengths; EOS inside rows; a row of only 1-byte patches (P = N + 1, others padded)."""
    g = torch.Generator().manual_seed(123)
    out = []
    for b in range(3):
        rows = [random_lengths(n, g) for _ in range(3)]
        ids = [random_ids(n, g, eos_at=(n // 3,) if i == 1 else ()) for i in range(3)]
        if b == 2:
            rows[0] = [1] * (n + 1)
        out.append(make_batch(rows, ids))
    return out


def hf_logits(model, ids, pl):
    with torch.no_grad():
        return model(input_ids=ids, patch_lengths=pl).logits


@pytest.fixture(scope="module")
def conversions(tmp_path_factory):
    """shape -> (HF model, directory holding hf/ and the converted bundle/), built on first use."""
    cache = {}

    def get(shape):
        if shape not in cache:
            root = tmp_path_factory.mktemp(shape)
            hf = build_hf(shape)
            hf.save_pretrained(root / "hf")
            assert main(["convert", "--from", "hf", str(root / "hf"), str(root / "bundle")]) == 0
            cache[shape] = (hf, root)
        return cache[shape]
    return get


@pytest.fixture(params=sorted(HF_SHAPES))
def converted(request, conversions):
    return conversions(request.param)


def test_from_hf_matches_logits(converted):
    hf, root = converted
    meta = read_bundle(root / "bundle")
    assert meta.kind == "blt" and meta.patcher == PatcherConfig(scheme="static", patch_size=1)  # HF: 1-byte patches
    model = ByteLatentTransformer.from_pretrained(root / "bundle" / "model").eval()
    cfg = model.config
    assert (cfg.encoder.window, cfg.encoder.doc_reset, cfg.global_model.doc_reset) == (None, False, False)
    assert (cfg.cross_attn.empty_rows, cfg.cross_attn.repool_each_layer) == ("uniform", True)
    for ids, pl in parity_batches():
        with torch.no_grad():
            ours = model(ids, pl)
        theirs = hf_logits(hf, ids, pl)
        assert ours.dtype == torch.float32 and ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)


def test_to_hf_round_trip_loads_in_transformers_with_same_logits(converted):
    hf, root = converted
    out = root / "back"
    assert main(["convert", "--to", "hf", str(root / "bundle"), str(out)]) == 0
    back, info = BltForCausalLM.from_pretrained(str(out), output_loading_info=True)
    back.eval()
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    model = ByteLatentTransformer.from_pretrained(root / "bundle" / "model").eval()
    for ids, pl in parity_batches():
        ref = hf_logits(hf, ids, pl)
        torch.testing.assert_close(hf_logits(back, ids, pl), ref, atol=TOL, rtol=0)
        with torch.no_grad():
            torch.testing.assert_close(model(ids, pl), ref, atol=TOL, rtol=0)
    # The tensors themselves survive the round trip bit for bit.
    for k, v in hf.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_bltkit_native_model_to_hf(tmp_path):
    """A model built and initialised by bltkit (HF semantics chosen in its config) -> HF."""
    from bltkit.model import load_blt_config

    cfg = load_blt_config("tiny", overrides=[
        "encoder.window=null", "encoder.doc_reset=false", "decoder.window=null", "decoder.doc_reset=false",
        "global_model.doc_reset=false", "cross_attn.empty_rows=uniform", "cross_attn.repool_each_layer=true",
        "hash.vocab=211"])
    model = ByteLatentTransformer(cfg).eval()
    model.save_pretrained(tmp_path / "blt")
    assert main(["convert", "--to", "hf", str(tmp_path / "blt"), str(tmp_path / "hf")]) == 0
    hf = BltForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["patch_in_forward"] is False
    for ids, pl in parity_batches():
        with torch.no_grad():
            torch.testing.assert_close(model(ids, pl), hf_logits(hf, ids, pl), atol=TOL, rtol=0)


# ---- names and configs map one to one ------------------------------------------------------------
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(enc_layers=st.integers(1, 3), dec_layers=st.integers(1, 3), k=st.integers(1, 3),
       enc_all=st.booleans(), dec_all=st.booleans(), glob_dim=st.sampled_from([16, 32, 48]),
       n_fn=st.integers(1, 2))
def test_every_tensor_name_maps_both_ways(enc_layers, dec_layers, k, enc_all, dec_all, glob_dim, n_fn):
    cfg = BltConfig(
        patch_in_forward=False, cross_attn_k=k, encoder_hash_byte_group_size=[3, 4],
        encoder_hash_byte_group_vocab=11, encoder_hash_byte_group_nb_functions=n_fn,
        encoder_config=dict(hidden_size=16, num_hidden_layers=enc_layers, num_attention_heads=2,
                            hidden_size_global=glob_dim, intermediate_size=24, cross_attn_all_layers=enc_all, cross_attn_k=k),
        decoder_config=dict(hidden_size=16, num_hidden_layers=dec_layers, num_attention_heads=2,
                            hidden_size_global=glob_dim, intermediate_size=24, cross_attn_all_layers=dec_all, cross_attn_k=k),
        global_config=dict(hidden_size=glob_dim, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24))
    with torch.device("meta"):
        hf_shapes = {n: tuple(t.shape) for n, t in BltForCausalLM(cfg).state_dict().items()}
        ours = ByteLatentTransformer(hf_config_to_blt(cfg))
    blt_shapes = {n: tuple(t.shape) for n, t in ours.state_dict().items()}
    assert {blt_to_hf_name(n): s for n, s in blt_shapes.items()} == hf_shapes
    assert all(hf_to_blt_name(blt_to_hf_name(n)) == n for n in blt_shapes)


# ---- the HF importer's errors name the file or tensor ---------------------------------------------
@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_err") / "hf"
    build_hf("1b-like").save_pretrained(d)
    return d


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _copy_with_config(src, dst, section, key, value):
    """A copy of an HF checkpoint with one entry of its config.json changed."""
    d = _copy(src, dst)
    cfg = json.loads((d / "config.json").read_text())
    cfg[section][key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_from_hf_missing_source_and_missing_weights(tmp_path, hf_dir, capsys):
    assert main(["convert", "--from", "hf", str(tmp_path / "nope"), str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    d = _copy(hf_dir, tmp_path / "noweights")
    (d / "model.safetensors").unlink()
    assert main(["convert", "--from", "hf", str(d), str(tmp_path / "o")]) == 2
    assert "has no model.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_from_hf_refuses_pickled_and_corrupt_weights(tmp_path, hf_dir, capsys):
    d = _copy(hf_dir, tmp_path / "pickled")
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    assert main(["convert", "--from", "hf", str(d), str(tmp_path / "o")]) == 2
    assert "pytorch_model.bin (pickle)" in capsys.readouterr().err
    d = _copy(hf_dir, tmp_path / "corrupt")
    (d / "model.safetensors").write_bytes(b"\x00" * 64)
    assert main(["convert", "--from", "hf", str(d), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors is not a readable safetensors file" in err


def test_from_hf_shape_mismatch_names_the_hf_tensor(tmp_path, hf_dir, capsys):
    d = _copy_with_config(hf_dir, tmp_path / "mismatch", "decoder_config", "intermediate_size", 128)
    assert main(["convert", "--from", "hf", str(d), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "model.local_decoder.layers.0.mlp.gate_proj.weight has shape (96, 32)" in err
    assert "expects (128, 32)" in err


def test_from_hf_refuses_what_bltkit_cannot_hold(tmp_path, hf_dir, capsys):
    d = _copy_with_config(hf_dir, tmp_path / "gqa_local", "encoder_config", "num_key_value_heads", 2)
    assert main(["convert", "--from", "hf", str(d), str(tmp_path / "o")]) == 2
    assert "encoder_config.num_key_value_heads 2" in capsys.readouterr().err


# ---- docs/reference-semantics.md §16: where the reference defaults and HF part ways ---------------------------
def reference_semantics(cfg, window):
    from dataclasses import replace

    return replace(cfg, encoder=replace(cfg.encoder, window=window, doc_reset=True),
                   decoder=replace(cfg.decoder, window=window, doc_reset=True),
                   global_model=replace(cfg.global_model, doc_reset=True),
                   cross_attn=replace(cfg.cross_attn, empty_rows="zero"))


def _twin(root, window):
    """(HF-semantics model, the same weights under the reference defaults)."""
    hf_model = ByteLatentTransformer.from_pretrained(root / "bundle" / "model").eval()
    ref_model = ByteLatentTransformer(reference_semantics(hf_model.config, window)).eval()
    ref_model.load_state_dict(hf_model.state_dict())
    return hf_model, ref_model


# The 1B layout: one encoder cross step, so pooling once and re-pooling agree.
def test_reference_defaults_differ_from_hf_only_after_eos(conversions):
    hf, root = conversions("1b-like")
    hf_model, ref_model = _twin(root, window=512)
    g = torch.Generator().manual_seed(5)
    n, t = 48, 20  # EOS at t in row 1; row 0 has none (and n <= 512)
    ids, pl = make_batch([random_lengths(n, g), random_lengths(n, g)],
                         [random_ids(n, g), random_ids(n, g, eos_at=(t,))])
    with torch.no_grad():
        a, b = hf_model(ids, pl), ref_model(ids, pl)
    torch.testing.assert_close(a, hf_logits(hf, ids, pl), atol=TOL, rtol=0)
    torch.testing.assert_close(b[0], a[0], atol=TOL, rtol=0)  # no EOS, within the window: same
    torch.testing.assert_close(b[1, : t + 1], a[1, : t + 1], atol=TOL, rtol=0)  # up to and with the EOS: same
    per_pos = (b[1, t + 1:] - a[1, t + 1:]).abs().amax(dim=-1)
    assert bool((per_pos > 1e-3).all()), per_pos  # after it: every position differs


def test_reference_window_differs_from_hf_only_beyond_the_window(conversions):
    hf, root = conversions("1b-like")
    w, n = 12, 40
    hf_model, ref_model = _twin(root, window=w)
    g = torch.Generator().manual_seed(6)
    ids, pl = make_batch([random_lengths(n, g)], [random_ids(n, g)])
    with torch.no_grad():
        a, b = hf_model(ids, pl), ref_model(ids, pl)
    torch.testing.assert_close(b[0, :w], a[0, :w], atol=TOL, rtol=0)
    assert bool(((b[0, w:] - a[0, w:]).abs().amax(dim=-1) > 1e-3).all())


# ---- HF's patcher <-> bltkit's entropy model -------------------------------------------------------
def test_patcher_weights_become_the_bundle_entropy_model_and_back(tmp_path):
    from entropy_model.model import EntropyModel

    torch.manual_seed(3)
    cfg = BltConfig(vocab_size=260, patch_in_forward=True, use_cache=False, patching_threshold=2.0,
                    patcher_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=256,  # the reference rounding reaches multiples of 256
                                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
                    **HF_SHAPES["1b-like"])
    cfg.num_hidden_layers = cfg.decoder_config.num_hidden_layers
    hf = BltForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "hf")
    assert main(["convert", "--from", "hf", str(tmp_path / "hf"), str(tmp_path / "bundle")]) == 0
    meta = read_bundle(tmp_path / "bundle")
    assert meta.has_entropy_model
    # HF thresholds its patcher's entropies unrounded
    assert meta.patcher == PatcherConfig(scheme="entropy", threshold=2.0, entropies_fp16=False, entropy_model="entropy_model")
    em = EntropyModel.from_pretrained(tmp_path / "bundle" / "entropy_model").eval()
    assert (em.config.window, em.config.doc_reset) == (None, False)  # HF's patcher: plain causal
    ids, pl = parity_batches()[1]  # EOS inside a row: HF's patcher does not reset there
    with torch.no_grad():
        hf_entropies, _, hf_patcher_logits = hf.model.patcher(ids)
        ours = em(ids)
    torch.testing.assert_close(ours, hf_patcher_logits.float(), atol=TOL, rtol=0)
    p = ours.log_softmax(-1)
    torch.testing.assert_close(-(p.exp() * p).sum(-1), hf_entropies, atol=TOL, rtol=0)

    assert main(["convert", "--to", "hf", str(tmp_path / "bundle"), str(tmp_path / "back")]) == 0
    back, info = BltForCausalLM.from_pretrained(str(tmp_path / "back"), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert back.config.patch_in_forward and back.config.patching_threshold == 2.0
    for k, v in hf.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
