"""One stack config (``bltkit.nn.StackConfig``) for the BLT's three stacks, the entropy model and
the byte LM; each component is built from its own sub-config; ``global_model`` is the same key in
YAML and Python, and config files of earlier versions get an error naming the renamed key."""
import dataclasses

import pytest
import torch

from bltkit import config as cfgio
from bltkit.model import ByteLatentTransformer, StackConfig, load_blt_config
from bltkit.model.global_transformer import GlobalTransformer
from bltkit.model.local_decoder import LocalDecoder
from bltkit.model.local_encoder import LocalEncoder
from bltkit.patchtrain.config import ByteLMConfig, load_bytelm_config
from bltkit.patchtrain.model import ByteLM
from entropy_model.model import EntropyModel, EntropyModelConfig, load_entropy_config

STACK_FIELDS = [f.name for f in dataclasses.fields(StackConfig)]


def _shapes(module: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_every_stack_is_one_config_type():
    blt = load_blt_config("tiny")
    stacks = [blt.encoder, blt.global_model, blt.decoder, load_entropy_config("tiny"), load_bytelm_config("tiny")]
    assert all(isinstance(s, StackConfig) for s in stacks)
    for s in stacks:  # the same fields, the same derived sizes
        assert [f for f in STACK_FIELDS if hasattr(s, f)] == STACK_FIELDS
        assert s.head_dim * s.n_heads == s.dim and s.hidden >= 1


@pytest.mark.parametrize("make", [
    lambda **kw: load_blt_config("tiny", [f"encoder.{k}={v}" for k, v in kw.items()]),
    lambda **kw: load_blt_config("tiny", [f"global_model.{k}={v}" for k, v in kw.items()]),
    lambda **kw: load_entropy_config("tiny", [f"{k}={v}" for k, v in kw.items()]),
    lambda **kw: load_bytelm_config("tiny", [f"{k}={v}" for k, v in kw.items()]),
], ids=["encoder", "global_model", "entropy", "bytelm"])
def test_one_validation_for_every_stack(make):
    with pytest.raises(cfgio.ConfigError, match="head_dim 3 .* must be even for RoPE"):
        make(dim=12, n_heads=4)
    with pytest.raises(cfgio.ConfigError, match="n_heads 4 is not a multiple of n_kv_heads 3"):
        make(n_kv_heads=3)
    with pytest.raises(cfgio.ConfigError, match="norm_eps 0.0"):
        make(norm_eps=0.0)


def test_only_windowed_stacks_take_a_window():
    assert load_blt_config("tiny").encoder.window == 512 and load_entropy_config("tiny").window == 512
    with pytest.raises(cfgio.ConfigError, match="global_model.window must be null, got 64"):
        load_blt_config("tiny", ["global_model.window=64"])
    with pytest.raises(cfgio.ConfigError, match="window must be null, got 64"):
        load_bytelm_config("tiny", ["window=64"])


def test_components_are_built_from_their_own_stack():
    """Each module takes its sub-config, so built alone it is the module inside the BLT."""
    cfg = load_blt_config("tiny", ["global_model.dim=96", "decoder.norm_eps=1e-6"])  # k*De 128 != G 96
    torch.manual_seed(0)
    blt = ByteLatentTransformer(cfg)
    enc = LocalEncoder(cfg.encoder, cfg.cross_attn, cfg.vocab_size)
    glob = GlobalTransformer(cfg.global_model, cfg.global_input_dim)
    dec = LocalDecoder(cfg.decoder, cfg.cross_attn, cfg.global_model.dim, cfg.vocab_size)
    assert _shapes(enc) == _shapes(blt.local_encoder)
    assert _shapes(glob) == _shapes(blt.global_transformer)
    assert glob.token_embedding_projection is not None and glob.token_embedding_projection.in_features == 128
    assert _shapes(dec) == _shapes(blt.local_decoder)
    # Each stack's own norm_eps reaches its norms (cross-attention norms included).
    assert blt.local_decoder.norm.eps == 1e-6 and blt.local_decoder.cross_attn_layers[0].cross_attn_norm_q.eps == 1e-6
    assert blt.local_encoder.layers[0].attention_norm.eps == 1e-5


def test_a_bytelm_of_the_global_models_stack_is_its_backbone():
    """The byte LM's config *is* a stack config: one with the BLT global model's fields builds a
    backbone with exactly the global transformer's parameters (no projection: its own width)."""
    blt = ByteLatentTransformer(load_blt_config("tiny"))
    g = blt.config.global_model
    lm = ByteLM(ByteLMConfig(**{f: getattr(g, f) for f in STACK_FIELDS}))
    assert _shapes(lm.global_transformer) == _shapes(blt.global_transformer)
    em = EntropyModel(EntropyModelConfig(**{f: getattr(blt.config.encoder, f) for f in STACK_FIELDS}))
    assert _shapes(em.layers) == _shapes(blt.local_encoder.layers)


def test_global_model_is_the_key_in_yaml_and_python(tmp_path):
    cfg = load_blt_config("tiny")
    model = ByteLatentTransformer(cfg)
    model.save_pretrained(tmp_path / "m")
    written = cfgio.read_yaml(tmp_path / "m" / "config.yaml")
    assert "global_model" in written and "global" not in written and "global_" not in written
    assert written["global_model"] == cfgio.to_dict(cfg.global_model)
    assert load_blt_config(tmp_path / "m" / "config.yaml") == cfg
    assert load_blt_config("tiny", ["global_model.n_layers=3"]).global_model.n_layers == 3


@pytest.mark.parametrize("text, needle", [
    ("global: {dim: 128, n_layers: 2, n_heads: 4}\n", r"key 'global' in .*m.yaml is no longer read: it is now 'global_model'"),
    ("global_: {dim: 128}\n", r"key 'global_' in .*m.yaml is no longer read: it is now 'global_model'"),
    ("norm_eps: 1.0e-5\n", r"key 'norm_eps' .* 'encoder.norm_eps', 'global_model.norm_eps'"),
    ("global_model: {attention: causal}\n", r"key 'global_model.attention' .* 'doc_reset' \(true for block_causal"),
])
def test_config_files_of_earlier_versions_name_the_renamed_key(tmp_path, text, needle):
    p = tmp_path / "m.yaml"
    p.write_text(text)
    with pytest.raises(cfgio.ConfigError, match=needle):
        load_blt_config(p)
