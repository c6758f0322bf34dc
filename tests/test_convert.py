"""``bltkit convert``: the reference format round trip, ``--to hf`` refusals and semantic changes,
and the errors every wrong input gets (missing files, foreign files, wrong shapes, unsupported
options), each naming the offending field, file or tensor."""
import json
import warnings
from dataclasses import replace

import pytest
import torch

from bltkit.bundle import read_bundle
from bltkit.cli import main
from bltkit.model import ByteLatentTransformer, load_blt_config
from bltkit.patching import PatcherConfig

warnings.filterwarnings("ignore", message=".*flex_attention.*")

# Two bltkit models under reference semantics: the shipped tiny config, and a two-layer encoder
# that cross-attends after every layer (pooled once), with mean pooling, GQA and a wider FFN.
VARIANTS = {
    "tiny": [],
    "deep-encoder": ["encoder.n_layers=2", "cross_attn.encoder_all_layers=true", "cross_attn.pooling=mean",
                     "global_model.n_kv_heads=2", "encoder.ffn_dim_multiplier=2.0", "decoder.ffn_dim_multiplier=2.0",
                     "global_model.ffn_dim_multiplier=2.0", "hash.n_functions=2", "hash.group_sizes=[3,5]",
                     "global_model.doc_reset=false"],
}


def normalized(cfg):
    """``cfg`` with FFN widths spelled out (a multiplier and an explicit width are the same model)."""
    def ffn(stack):
        return replace(stack, ffn_hidden=stack.hidden, ffn_dim_multiplier=1.0)
    return replace(cfg, encoder=ffn(cfg.encoder), global_model=ffn(cfg.global_model), decoder=ffn(cfg.decoder))


def reference_params(cfg) -> dict:
    """The reference's ByteLatentTransformerArgs fields (docs/reference-semantics.md §15) for ``cfg``."""
    e, g, d, c = cfg.encoder, cfg.global_model, cfg.decoder, cfg.cross_attn
    assert e.ffn_dim_multiplier == g.ffn_dim_multiplier == d.ffn_dim_multiplier
    assert e.norm_eps == g.norm_eps == d.norm_eps  # the reference has one norm_eps
    return {
        "vocab_size": 260, "dim_local_encoder": e.dim, "n_layers_local_encoder": e.n_layers,
        "n_heads_local_encoder": e.n_heads, "dim_global": g.dim, "n_layers_global": g.n_layers,
        "n_heads_global": g.n_heads, "n_kv_heads_global": g.n_kv_heads, "dim_local_decoder": d.dim,
        "n_layers_local_decoder": d.n_layers, "n_heads_local_decoder": d.n_heads,
        "ffn_dim_multiplier": e.ffn_dim_multiplier, "multiple_of": 256,
        "cross_attn_encoder": True, "cross_attn_decoder": True, "cross_attn_init_by_pooling": True,
        "cross_attn_k": c.k, "cross_attn_nheads": c.n_heads,
        "cross_attn_all_layers_encoder": c.encoder_all_layers, "cross_attn_all_layers_decoder": c.decoder_all_layers,
        "use_local_encoder_transformer": True,
        "encoder_hash_byte_group_size": ",".join(str(n) for n in cfg.hash.group_sizes),  # the string form
        "encoder_hash_byte_group_nb_functions": cfg.hash.n_functions,
        "encoder_hash_byte_group_vocab": cfg.hash.vocab,
        "rope_theta": e.rope_theta, "norm_eps": e.norm_eps, "local_attention_window_len": e.window,
        "attn_impl": "xformers", "attn_bias_type": "block_causal" if g.doc_reset else "causal",
        "downsampling_by_pooling": {"mean": "avg"}.get(c.pooling, c.pooling),
        "patching_mode": "entropy", "patching_threshold": 3.1439,
    }


def reference_state(model) -> dict:
    """The reference's parameter names: bltkit's, with the fused hash table split per table."""
    out = {}
    for k, v in model.state_dict().items():
        if k == "encoder_hash_tok_embedding.weight":
            for i, table in enumerate(v.split(model.config.hash.vocab, dim=0)):
                out[f"encoder_hash_tok_embedding.{i}.weight"] = table.clone()
        else:
            out[k] = v.clone()
    return out


def write_reference(directory, model, params=None, nested=True, state=None, patcher_args=None):
    directory.mkdir(parents=True, exist_ok=True)
    params = reference_params(model.config) if params is None else params
    patcher_args = {"patching_mode": "entropy", "threshold": 1.5} if patcher_args is None else patcher_args
    data = {"model": params, "data": {"patcher_args": patcher_args}} if nested else params
    (directory / "params.json").write_text(json.dumps(data))
    sd = reference_state(model) if state is None else state
    torch.save({"model": sd} if nested else sd, directory / "consolidated.pth")
    return directory


def batch(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 260, (3, n), generator=g)
    ids[:, 0] = 1
    ids[1, 17], ids[1, 18] = 2, 1  # a document boundary inside row 1
    rows = []
    for _ in range(3):
        lens, left = [1], n
        while left:
            lens.append(min(left, int(torch.randint(1, 7, (1,), generator=g))))
            left -= lens[-1]
        rows.append(lens)
    pl = torch.zeros(3, max(map(len, rows)), dtype=torch.long)
    for i, r in enumerate(rows):
        pl[i, : len(r)] = torch.tensor(r)
    return ids, pl


@pytest.fixture(scope="module")
def ref_model():
    torch.manual_seed(0)
    return ByteLatentTransformer(load_blt_config("tiny")).eval()


# ---- the reference format ------------------------------------------------------------------------
@pytest.mark.parametrize("variant,nested", [("tiny", True), ("deep-encoder", False)])
def test_from_reference_round_trip_identical_logits(tmp_path, variant, nested):
    torch.manual_seed(1)
    model = ByteLatentTransformer(load_blt_config("tiny", overrides=VARIANTS[variant])).eval()
    src = write_reference(tmp_path / "ref", model, nested=nested)
    assert main(["convert", "--from", "reference", str(src), str(tmp_path / "bundle")]) == 0
    meta = read_bundle(tmp_path / "bundle")
    want_threshold = 1.5 if nested else 3.1439  # data.patcher_args wins over the model's field
    # the reference thresholds unrounded entropies at inference
    assert meta.patcher == PatcherConfig(scheme="entropy", threshold=want_threshold, entropies_fp16=False)
    assert not meta.has_entropy_model
    back = ByteLatentTransformer.from_pretrained(tmp_path / "bundle" / "model").eval()
    assert normalized(back.config) == normalized(model.config)
    for seed in range(2):
        ids, pl = batch(seed=seed)
        with torch.no_grad():
            assert torch.equal(back(ids, pl), model(ids, pl))


def test_from_reference_sdpa_means_plain_causal(tmp_path, ref_model, capsys):
    params = dict(reference_params(ref_model.config), attn_impl="sdpa")
    src = write_reference(tmp_path / "ref", ref_model, params=params)
    assert main(["convert", "--from", "reference", str(src), str(tmp_path / "b")]) == 0
    assert "attn_impl 'sdpa'" in capsys.readouterr().out
    cfg = ByteLatentTransformer.from_pretrained(tmp_path / "b" / "model").config
    assert (cfg.encoder.window, cfg.encoder.doc_reset, cfg.global_model.doc_reset) == (None, False, False)


@pytest.mark.parametrize("field,value", [
    ("encoder_enable_byte_ngrams", True),
    ("encoder_ngram_to_size_str", "2:38396,3:50000"),
    ("cross_attn_encoder", False),
    ("cross_attn_decoder", False),
    ("cross_attn_window_encoder", 2),
    ("downsampling_by_pooling", "avg,max"),
    ("attn_impl", "fmha"),
    ("patching_mode", ""),
    ("dim_local_decoder", 32),
])
def test_from_reference_rejects_unsupported_options_naming_the_field(tmp_path, ref_model, capsys, field, value):
    params = dict(reference_params(ref_model.config), **{field: value})
    src = write_reference(tmp_path / "ref", ref_model, params=params)
    assert main(["convert", "--from", "reference", str(src), str(tmp_path / "b")]) == 2
    assert f"'{field}'" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_from_reference_missing_files(tmp_path, ref_model, capsys):
    src = write_reference(tmp_path / "ref", ref_model)
    (src / "consolidated.pth").unlink()
    assert main(["convert", "--from", "reference", str(src), str(tmp_path / "b")]) == 2
    assert "reference weights file not found" in capsys.readouterr().err
    (src / "params.json").unlink()
    assert main(["convert", "--from", "reference", str(src), str(tmp_path / "b")]) == 2
    assert "params file not found" in capsys.readouterr().err
    assert main(["convert", "--from", "reference", str(tmp_path / "nothing"), str(tmp_path / "b")]) == 2
    assert "directory not found" in capsys.readouterr().err


class NotATensor:  # pickled by reference, refused by weights_only loading
    pass


def test_from_reference_refuses_pickled_objects_and_garbage(tmp_path, ref_model, capsys):
    src = write_reference(tmp_path / "ref", ref_model)
    torch.save({"model": {"x": NotATensor()}}, src / "consolidated.pth")
    assert main(["convert", "--from", "reference", str(src), str(tmp_path / "b")]) == 2
    assert "not a plain PyTorch state dict" in capsys.readouterr().err
    (src / "consolidated.pth").write_bytes(b"definitely not a checkpoint")
    assert main(["convert", "--from", "reference", str(src), str(tmp_path / "b")]) == 2
    assert "consolidated.pth is not a plain PyTorch state dict" in capsys.readouterr().err


def test_from_reference_shape_mismatches_name_the_tensor(tmp_path, ref_model, capsys):
    params = dict(reference_params(ref_model.config), ffn_dim_multiplier=2.0)
    src = write_reference(tmp_path / "ffn", ref_model, params=params)
    assert main(["convert", "--from", "reference", str(src), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "local_encoder.layers.0.feed_forward.w1.weight has shape (256, 64)" in err and "(512, 64)" in err
    params = dict(reference_params(ref_model.config), encoder_hash_byte_group_vocab=4000)
    src = write_reference(tmp_path / "hash", ref_model, params=params)
    assert main(["convert", "--from", "reference", str(src), str(tmp_path / "b")]) == 2
    assert "encoder_hash_tok_embedding.0.weight has shape (4099, 64)" in capsys.readouterr().err
    state = reference_state(ref_model)
    state.pop("local_decoder.norm.weight")
    src = write_reference(tmp_path / "missing", ref_model, state=state)
    assert main(["convert", "--from", "reference", str(src), str(tmp_path / "b")]) == 2
    assert "missing tensors ['local_decoder.norm.weight']" in capsys.readouterr().err


# ---- output handling ------------------------------------------------------------------------------
def test_output_must_be_empty_unless_forced(tmp_path, ref_model, capsys):
    src = write_reference(tmp_path / "ref", ref_model)
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["convert", "--from", "reference", str(src), str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert main(["convert", "--from", "reference", str(src), str(out), "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "bundle.yaml").is_file()


def test_flags_that_do_not_apply_are_refused(tmp_path, capsys):
    assert main(["convert", "--from", "hf", "a", str(tmp_path / "b"), "--entropy-model", "x"]) == 2
    assert "--entropy-model applies to --from reference" in capsys.readouterr().err
    assert main(["convert", "--from", "hf", "a", str(tmp_path / "b"), "--allow-semantic-change"]) == 2
    assert "--allow-semantic-change applies to --to hf" in capsys.readouterr().err


# ---- --to hf: refusals and declared semantic changes ---------------------------------------------
def test_to_hf_refuses_reference_semantics_and_lists_each_difference(tmp_path, ref_model, capsys):
    ref_model.save_pretrained(tmp_path / "blt")
    assert main(["convert", "--to", "hf", str(tmp_path / "blt"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    for item in ("encoder.window 512", "decoder.doc_reset true", "global_model.doc_reset true",
                 "cross_attn.empty_rows zero", "--allow-semantic-change"):
        assert item in err, item
    assert not (tmp_path / "hf").exists()


def test_to_hf_with_allowed_changes_computes_exactly_the_listed_semantics(tmp_path, ref_model, capsys):
    from transformers import BltForCausalLM

    ref_model.save_pretrained(tmp_path / "blt")
    assert main(["convert", "--to", "hf", str(tmp_path / "blt"), str(tmp_path / "hf"), "--allow-semantic-change"]) == 0
    changes = [l for l in capsys.readouterr().out.splitlines() if "semantic change:" in l]
    assert len(changes) == 6, changes  # encoder/decoder window and doc_reset, global, empty rows
    assert sum(key in line for line in changes for key in
               ("encoder.window", "encoder.doc_reset", "decoder.window", "decoder.doc_reset",
                "global_model.doc_reset", "cross_attn.empty_rows")) == 6
    hf = BltForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    cfg = ref_model.config
    hf_semantics = replace(cfg, encoder=replace(cfg.encoder, window=None, doc_reset=False),
                           decoder=replace(cfg.decoder, window=None, doc_reset=False),
                           global_model=replace(cfg.global_model, doc_reset=False),
                           cross_attn=replace(cfg.cross_attn, empty_rows="uniform"))
    twin = ByteLatentTransformer(hf_semantics).eval()
    twin.load_state_dict(ref_model.state_dict())
    ids, pl = batch()
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, patch_lengths=pl).logits, twin(ids, pl), atol=1e-4, rtol=0)
        assert not torch.allclose(ref_model(ids, pl)[1], twin(ids, pl)[1], atol=1e-3)  # the changes are real


def test_to_hf_hard_blockers_even_with_the_flag(tmp_path, capsys):
    model = ByteLatentTransformer(load_blt_config("tiny", overrides=["encoder.n_kv_heads=2"]))
    model.save_pretrained(tmp_path / "blt")
    assert main(["convert", "--to", "hf", str(tmp_path / "blt"), str(tmp_path / "hf"), "--allow-semantic-change"]) == 2
    err = capsys.readouterr().err
    assert "no Hugging Face equivalent" in err and "encoder.n_kv_heads 2" in err


def test_to_hf_source_must_be_a_bundle_or_model_dir(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["convert", "--to", "hf", str(tmp_path / "empty"), str(tmp_path / "hf")]) == 2
    assert "neither a bltkit bundle" in capsys.readouterr().err


# ---- the reference's entropy model ------------------------------------------------------------------
def test_from_reference_with_its_entropy_model(tmp_path, ref_model, capsys):
    from entropy_model.model import EntropyModel, EntropyModelConfig

    torch.manual_seed(2)
    # The reference loader's fixed semantics (docs/reference-semantics.md §3): window 512, EOS reset, theta 10000.
    em = EntropyModel(EntropyModelConfig(dim=32, n_layers=2, n_heads=4)).eval()
    src = write_reference(tmp_path / "ref", ref_model)
    em_dir = src / "entropy_model"
    em_dir.mkdir()
    (em_dir / "params.json").write_text(json.dumps({"entropy_model": {
        "dim": 32, "n_layers": 2, "n_heads": 4, "vocab_size": 260, "ffn_dim_multiplier": 1.0, "max_seqlen": 8192}}))
    torch.save({k: v.clone() for k, v in em.state_dict().items()}, em_dir / "consolidated.pth")
    assert main(["convert", "--from", "reference", str(src), str(tmp_path / "b")]) == 0
    meta = read_bundle(tmp_path / "b")
    assert meta.has_entropy_model and meta.patcher.entropy_model == "entropy_model"
    back = EntropyModel.from_pretrained(tmp_path / "b" / "entropy_model").eval()
    ids, _ = batch(n=600)  # longer than the window, with an EOS inside row 1
    with torch.no_grad():
        assert torch.equal(back(ids), em(ids))
    # HF's patcher would drop the window and the EOS reset: refused unless allowed, then listed.
    assert main(["convert", "--to", "hf", str(tmp_path / "b"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "entropy model window 512" in err and "encoder.window 512" in err  # all changes in one message
    assert main(["convert", "--to", "hf", str(tmp_path / "b"), str(tmp_path / "hf"), "--allow-semantic-change"]) == 0
    out = capsys.readouterr().out
    assert "semantic change: entropy model window 512 -> none" in out
    assert "semantic change: entropy model doc_reset true -> false" in out


def _reference_entropy_model(src):
    """A small reference-format entropy model in ``src/entropy_model`` (params.json + weights)."""
    from entropy_model.model import EntropyModel, EntropyModelConfig

    torch.manual_seed(2)
    em = EntropyModel(EntropyModelConfig(dim=32, n_layers=2, n_heads=4)).eval()
    d = src / "entropy_model"
    d.mkdir()
    (d / "params.json").write_text(json.dumps({"entropy_model": {
        "dim": 32, "n_layers": 2, "n_heads": 4, "vocab_size": 260, "ffn_dim_multiplier": 1.0, "max_seqlen": 8192}}))
    torch.save({k: v.clone() for k, v in em.state_dict().items()}, d / "consolidated.pth")
    return em


def test_from_reference_monotonic_patcher_loads_and_patches(tmp_path, ref_model, capsys):
    """The reference's ``monotonicity: true`` becomes scheme monotonic with its relative threshold
    (``threshold_add`` unused, as in the reference); the bundle loads and patches by that rule,
    checked against the rule written out here on the entropy model's own entropies."""
    import bltkit

    src = write_reference(tmp_path / "ref", ref_model, patcher_args={
        "patching_mode": "entropy", "threshold": 0.02, "threshold_add": 0.5, "monotonicity": True,
        "max_patch_length": 5})
    em = _reference_entropy_model(src)
    assert main(["convert", "--from", "reference", str(src), str(tmp_path / "b")]) == 0
    assert "threshold_add 0.5 is unused with monotonicity" in capsys.readouterr().out
    meta = read_bundle(tmp_path / "b")
    assert meta.patcher == PatcherConfig(scheme="monotonic", threshold=0.02, max_patch_length=5, entropies_fp16=False,
                                         entropy_model="entropy_model")
    text = b"The reference's monotonic patcher, converted: bytes whose entropy rises start patches."
    got = bltkit.load(tmp_path / "b", device="cpu").patch(text).lengths
    ids = torch.tensor([[1] + [b + 4 for b in text]])  # BOS + bytes, as patch() encodes them
    with torch.no_grad():
        logp = em(ids)[0].float().log_softmax(-1)
    h = -(logp.exp() * logp).sum(-1)  # (T,) H[t]: entropy of the prediction of byte t + 1
    starts = [c for c in range(ids.shape[1]) if c < 3 or float(h[c - 1] - h[c - 2]) > 0.02]
    want = []
    for a, b in zip(starts, starts[1:] + [ids.shape[1]]):
        n = b - a
        want += [5] * (n // 5) + ([n % 5] if n % 5 else [])
    assert got == want and 1 < len(want) < ids.shape[1]  # varied patches, each at most 5


def test_from_reference_without_hash_tables(tmp_path):
    """A reference model with no hash n-gram embeddings (no ``encoder_hash_byte_group_size``, no
    ``encoder_hash_tok_embedding.*`` tensors) converts, and computes the same logits."""
    torch.manual_seed(4)
    model = ByteLatentTransformer(load_blt_config("tiny", overrides=["hash.n_functions=0", "hash.group_sizes=[]"])).eval()
    params = reference_params(model.config)
    del params["encoder_hash_byte_group_size"]
    state = {k: v for k, v in reference_state(model).items() if not k.startswith("encoder_hash_tok_embedding")}
    src = write_reference(tmp_path / "ref", model, params=params, state=state)
    assert main(["convert", "--from", "reference", str(src), str(tmp_path / "b")]) == 0
    back = ByteLatentTransformer.from_pretrained(tmp_path / "b" / "model").eval()
    assert back.config.hash.n_tables == 0
    ids, pl = batch()
    with torch.no_grad():
        assert torch.equal(back(ids, pl), model(ids, pl))
