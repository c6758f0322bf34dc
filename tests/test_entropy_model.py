"""Entropy model (docs/reference-semantics.md §3): names, masks, persistence, entropies, streaming, bad input."""
import math

import pytest
import torch

from bltkit.config import ConfigError
from bltkit.data.vocab import EOS_ID, OFFSET
from bltkit.patching.entropies import LN_VOCAB, compute_entropies, entropy
from bltkit.nn.kv_cache import WindowCarry
from entropy_model.model import EntropyModel, EntropyModelConfig, load_entropy_config


def _model(**kw):
    torch.manual_seed(0)
    return EntropyModel(EntropyModelConfig(**{"dim": 32, "n_layers": 2, "n_heads": 2, "window": 64, **kw}))


def test_shipped_configs_build_with_reference_sizes():
    paper = load_entropy_config("paper")
    assert (paper.dim, paper.n_layers, paper.n_heads, paper.window, paper.hidden, paper.rope_theta) == (768, 14, 12, 512, 2048, 10000.0)
    small = load_entropy_config("small")
    assert (small.dim, small.n_layers, small.hidden) == (512, 8, 1536)
    with torch.device("meta"):
        n = EntropyModel(small).num_parameters()
    assert abs(n - 27.5e6) < 0.1e6  # the bench-S patcher's size
    m = EntropyModel(load_entropy_config("tiny"))
    assert m(torch.randint(0, 260, (1, 10))).shape == (1, 10, 260)


def test_reference_parameter_names():
    names = set(_model().state_dict())
    for n in ("tok_embeddings.weight", "norm.weight", "output.weight", "layers.0.attention.wq.weight",
              "layers.1.feed_forward.w2.weight", "layers.0.attention_norm.weight", "layers.0.ffn_norm.weight"):
        assert n in names
    assert "output.bias" not in names


def test_init_truncated_at_three_sigma():
    m = _model(dim=64, n_heads=4)
    std = 64 ** -0.5
    w = m.tok_embeddings.weight
    assert w.abs().max() <= 3 * std + 1e-6 and abs(w.std().item() - std) / std < 0.2
    assert m.output.weight.abs().max() <= 3 * std + 1e-6


def test_forward_fp32_causal_windowed_and_resets_after_eos():
    m = _model(window=8).eval()
    ids = torch.randint(OFFSET, 260, (1, 40))
    with torch.no_grad():
        base = m(ids)
        assert base.dtype == torch.float32
        changed = ids.clone()
        changed[0, 30] = (changed[0, 30] - OFFSET + 1) % 256 + OFFSET
        out = m(changed)
    assert torch.allclose(out[:, :30], base[:, :30], atol=1e-6)  # causal
    assert not torch.allclose(out[:, 30], base[:, 30])
    # two layers reach 2 x 7 back: position 30 + 15 = 45 is past the row; position 5 before 30 unaffected
    changed2 = ids.clone()
    changed2[0, 5] = (changed2[0, 5] - OFFSET + 1) % 256 + OFFSET
    with torch.no_grad():
        out2 = m(changed2)
    assert torch.allclose(out2[:, 5 + 15:], base[:, 5 + 15:], atol=1e-5)  # beyond the receptive field
    assert not torch.allclose(out2[:, 5 + 7], base[:, 5 + 7])
    # EOS resets: what follows an EOS does not see what came before it
    doc = ids.clone()
    doc[0, 20] = EOS_ID
    doc2 = doc.clone()
    doc2[0, 18] = (doc2[0, 18] - OFFSET + 1) % 256 + OFFSET
    with torch.no_grad():
        assert torch.allclose(m(doc)[:, 21:], m(doc2)[:, 21:], atol=1e-6)


def test_uniform_logits_give_ln_260():
    class Uniform(torch.nn.Module):
        def forward(self, ids):
            return torch.zeros(*ids.shape, 260)

    h = compute_entropies(Uniform(), torch.randint(0, 260, (2, 5)))
    assert torch.allclose(h, torch.full((2, 5), math.log(260)))
    assert abs(LN_VOCAB - 5.560681) < 1e-5
    assert torch.allclose(entropy(torch.tensor([[0.0, -1e9, -1e9]])), torch.zeros(1), atol=1e-6)


def test_streaming_equals_single_pass_on_long_document():
    m = _model().eval()  # window 64, 2 layers: receptive field 126
    assert m.receptive_field == 2 * 63
    g = torch.Generator().manual_seed(1)
    doc = torch.randint(OFFSET, 260, (3000,), generator=g)
    doc[1234] = EOS_ID
    with torch.no_grad():
        full = entropy(m(doc[None]))[0]
    streamed = compute_entropies(m, [doc], chunk_len=300)[0]
    assert streamed.shape == (3000,)
    assert torch.allclose(streamed, full, atol=1e-4)
    # an overlap of only window - 1 is not enough for two layers: the receptive field is needed
    class OneWindow(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.receptive_field = inner, 63

        def forward(self, ids):
            return self.inner(ids)

    short = compute_entropies(OneWindow(m), [doc], chunk_len=300)[0]
    assert (short - full).abs().max() > 1e-3


def _positions_scored(model, fn):
    """Positions the model's forward sees while ``fn`` runs, and the calls that carried keys."""
    seen = {"positions": 0, "carried": 0}

    def hook(_module, args, kwargs):
        seen["positions"] += args[0].numel()
        seen["carried"] += kwargs.get("carry") is not None

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        out = fn()
    finally:
        handle.remove()
    return out, seen


@pytest.mark.parametrize("kw", [{}, {"doc_reset": False}, {"n_kv_heads": 1}], ids=["docs", "no-reset", "gqa"])
def test_carried_streaming_scores_each_position_once_and_equals_single_pass(kw):
    m = _model(**kw).eval()  # window 64: 63 keys carried a layer
    g = torch.Generator().manual_seed(2)
    doc = torch.randint(OFFSET, 260, (3000,), generator=g)
    doc[[1234, 1290, 2999]] = EOS_ID
    with torch.no_grad():
        full = entropy(m(doc[None]))[0]
    for chunk in (300, 37):  # 37 < window - 1: the carried keys span several chunks
        streamed, seen = _positions_scored(m, lambda: compute_entropies(m, [doc], chunk_len=chunk)[0])
        assert seen == {"positions": 3000, "carried": -(-3000 // chunk)}  # nothing recomputed
        torch.testing.assert_close(streamed, full, atol=5e-5, rtol=0)
    # rows of different lengths in lockstep, with a short row beside them and logits returned
    rows = [doc, doc[:1700], doc[:100]]
    (ents, logits), seen = _positions_scored(
        m, lambda: compute_entropies(m, rows, chunk_len=300, return_logits=True))
    assert seen["positions"] == 100 + 2 * 3000 and seen["carried"] == 10  # the 1700-byte row pads to the longer
    for r, e, lg in zip(rows, ents, logits):
        torch.testing.assert_close(e, full[: r.numel()], atol=5e-5, rtol=0)
        assert lg.shape == (r.numel(), 260) and torch.allclose(entropy(lg), e, atol=1e-5)
    # the dense reference mask keeps overlapping chunks: more positions, the same entropies
    dense_m = _model(**kw, local_attention="dense").eval()
    dense_m.load_state_dict(m.state_dict())
    overlapped, seen = _positions_scored(dense_m, lambda: compute_entropies(dense_m, [doc], chunk_len=300)[0])
    assert seen["carried"] == 0 and seen["positions"] > 3000
    torch.testing.assert_close(overlapped, full, atol=1e-4, rtol=0)


def test_rows_are_independent_of_their_batch_and_logits_returned():
    m = _model().eval()
    a = torch.randint(OFFSET, 260, (500,))
    b = torch.randint(OFFSET, 260, (37,))
    alone = compute_entropies(m, [a], chunk_len=200)[0]
    ents, logits = compute_entropies(m, [b, a, b], chunk_len=200, return_logits=True)
    assert torch.allclose(ents[1], alone, atol=1e-5)
    assert logits[1].shape == (500, 260)
    assert torch.allclose(entropy(logits[1]), ents[1], atol=1e-5)
    batch = compute_entropies(m, torch.stack([a[:37], b]), precision="fp32")
    assert batch.shape == (2, 37) and torch.allclose(batch[1], ents[0], atol=1e-5)


def test_save_and_load_roundtrip_and_errors(tmp_path):
    m = _model().eval()
    m.save_pretrained(tmp_path / "em")
    back = EntropyModel.from_pretrained(tmp_path / "em").eval()
    ids = torch.randint(0, 260, (1, 20))
    with torch.no_grad():
        assert torch.equal(m(ids), back(ids))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        EntropyModel.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        EntropyModel.from_pretrained(tmp_path / "half")
    _model(dim=48, n_heads=2).save_pretrained(tmp_path / "other")
    (tmp_path / "em" / "model.safetensors").replace(tmp_path / "mismatch.safetensors")
    (tmp_path / "other" / "model.safetensors").replace(tmp_path / "em" / "model.safetensors")
    with pytest.raises(ValueError, match="tok_embeddings.weight"):
        EntropyModel.from_pretrained(tmp_path / "em")
    (tmp_path / "em" / "config.yaml").write_text("dim: 32\nn_layers: 2\nn_heads: 2\nwindows: 4\n")
    with pytest.raises(ConfigError, match="windows"):
        EntropyModel.from_pretrained(tmp_path / "em")


def test_bad_config_and_ids():
    with pytest.raises(ValueError, match="vocab_size"):
        EntropyModelConfig(vocab_size=256).validate()
    with pytest.raises(ValueError, match="n_heads"):
        EntropyModel(EntropyModelConfig(dim=30, n_heads=4))
    with pytest.raises(ValueError, match="300"):
        _model()(torch.tensor([[1, 300]]))
    with pytest.raises(ValueError, match="chunk_len 100 must exceed the overlap .* 126"):  # overlapping chunks
        compute_entropies(_model(local_attention="dense"), [torch.ones(500, dtype=torch.long)], chunk_len=100)
    with pytest.raises(ValueError, match="chunk_len must be >= 1, got 0"):
        compute_entropies(_model(), [torch.ones(500, dtype=torch.long)], chunk_len=0)
    with pytest.raises(ValueError, match="window >= 2, got 1"):
        WindowCarry(2, 1, 16, 10000.0)
