"""Fixed-K patch-level training (bltkit.patchtrain): the model, the loss, the rows, the phases,
the FLOP accounting and the user mistakes (docs/fixed-k.md)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bltkit import config as cfgio
from bltkit.bundle import load_bundle_models
from bltkit.data.packing import BytePacker, collate
from bltkit.data.vocab import EOS_ID, OFFSET, encode_tensor
from bltkit.model.global_transformer import GlobalTransformer
from bltkit.patchtrain.config import ByteLMConfig
from bltkit.patchtrain.loss import patch_nats
from bltkit.patchtrain.model import ByteLM
from bltkit.training.blt_init import init_global_transformer
from bltkit.patchtrain.schedule import (Budget, PatchTrainConfig, patch_train, patch_train_config_from_dict,
                                        patch_train_phases, plan, relative_cost)
from bltkit.patchtrain.task import ByteLMTask, ByteLMTaskSettings, bytelm_forward_flops
from bltkit.training.config import train_config_from_dict
from bltkit.training.metrics import read_metrics
from bltkit.training.task import masked_nats

SMALL = ByteLMConfig(dim=32, n_layers=1, n_heads=2)


def small_model(**kw) -> ByteLM:
    return ByteLM(ByteLMConfig(**{**cfgio.to_dict(SMALL), **kw}))


def docs_strategy():
    return st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=6)


# ---- rows -------------------------------------------------------------------------------------------
def rows_of(docs: list[bytes], k: int, t: int) -> dict:
    """Every row of the patch phase's packing (the data pipeline's BytePacker, shift K) of ``docs``."""
    packer = BytePacker(k * t, final_target="next", shift=k)
    for d in docs:
        packer.add(encode_tensor(d))
    return collate(packer.pop_rows() + packer.flush(), pad_to=k * t)


# ---- model -------------------------------------------------------------------------------------------
def test_backbone_is_blt_global_transformer_and_mean_pooled_input():
    m = small_model()
    assert isinstance(m.global_transformer, GlobalTransformer)
    assert m.global_transformer.token_embedding_projection is None
    seen = {}

    def grab(mod, args):
        seen["x"] = args[0].detach()

    m.global_transformer.register_forward_pre_hook(grab)
    ids = torch.tensor([[10, 20, 30, 40, 50, 60]])
    m(ids, patch_size=3)
    e = m.tok_embeddings.weight.detach()
    expected = torch.stack([(e[10] + e[20] + e[30]) / 3, (e[40] + e[50] + e[60]) / 3])[None]  # (1, 2, D)
    torch.testing.assert_close(seen["x"], expected)


def test_patch_positions_are_causal():
    m = small_model(doc_reset=False)
    ids = torch.randint(OFFSET, 260, (2, 12))
    other = ids.clone()
    other[:, 8:] = torch.randint(OFFSET, 260, (2, 4))  # change the last patch (K=4)
    a, b = m(ids, patch_size=4), m(other, patch_size=4)
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2], b[:, 2])


def test_doc_reset_stops_attention_after_eos():
    m = small_model(doc_reset=True)
    ids = torch.tensor([[7, 8, EOS_ID, 9, 10, 11]])
    other = ids.clone()
    other[0, :2] = torch.tensor([50, 60])
    torch.testing.assert_close(m(ids)[:, 3:], m(other)[:, 3:])


def test_save_load_and_bundle(tmp_path):
    from bltkit.bundle import save_bundle

    m = small_model()
    save_bundle(tmp_path / "b", m, "bytelm")
    meta, m2, em = load_bundle_models(tmp_path / "b")
    assert meta.kind == "bytelm" and em is None and isinstance(m2, ByteLM)
    ids = torch.randint(OFFSET, 260, (2, 8))
    torch.testing.assert_close(m(ids), m2(ids))


def test_init_blt_global_from_bytelm():
    from bltkit.model.blt import ByteLatentTransformer, load_blt_config

    blt = ByteLatentTransformer(load_blt_config("tiny"))
    g = blt.config.global_model
    lm = ByteLM(ByteLMConfig(dim=g.dim, n_layers=g.n_layers, n_heads=g.n_heads, init_seed=5))
    init_global_transformer(blt, lm.state_dict(), "lm")
    for k, v in lm.global_transformer.layers.state_dict().items():
        assert torch.equal(blt.global_transformer.layers.state_dict()[k], v)
    with pytest.raises(ValueError, match="small: the backbone does not fit"):
        init_global_transformer(blt, small_model().state_dict(), "small")
    with pytest.raises(ValueError, match="no global_transformer tensors"):
        init_global_transformer(blt, {"output.weight": torch.zeros(1)}, "other")


# ---- loss --------------------------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(docs=docs_strategy(), t=st.integers(1, 8))
def test_k1_patch_loss_equals_byte_loss(docs, t):
    torch.manual_seed(0)
    m = small_model()
    b = rows_of(docs, 1, t)
    s1, n1 = patch_nats(m(b["ids"], patch_size=1), b["targets"], b["mask"])
    s2, n2 = masked_nats(m(b["ids"]), b["targets"], b["mask"])
    assert n1 == n2
    torch.testing.assert_close(s1, s2, rtol=1e-6, atol=1e-5)


def test_k_target_loss_by_hand():
    # T=2 positions, K=2: position 0 scores bytes (2, 3), position 1 bytes (4, 5) (the last is padding).
    logits = torch.zeros(1, 2, 260)
    logits[0, 0, 2] = 2.0
    logits[0, 1, 4] = 1.0
    targets = torch.tensor([[2, 3, 4, 5]])
    mask = torch.tensor([[1, 1, 1, 0]])
    nats, n = patch_nats(logits, targets, mask)
    z0 = math.exp(2.0) + 259
    z1 = math.exp(1.0) + 259
    expected = -((2.0 - math.log(z0)) + (0.0 - math.log(z0)) + (1.0 - math.log(z1)))
    assert int(n) == 3
    assert float(nats) == pytest.approx(expected, rel=1e-6)
    # the order of the K targets inside the next patch is ignored
    swapped = torch.tensor([[3, 2, 4, 5]])
    assert float(patch_nats(logits, swapped, mask)[0]) == pytest.approx(expected, rel=1e-6)


# ---- training through the one loop -------------------------------------------------------------------
def run_config(tmp_path, **task):
    yaml = tmp_path / "lm.yaml"
    if not yaml.exists():
        cfgio.write_yaml(SMALL, yaml)
    return train_config_from_dict({
        "kind": "bytelm", "model": str(yaml), "task": task,
        "data": {"train": ["builtin"], "limit_bytes": 20000, "seq_len": 32, "batch_size": 4, "eval_rows": 4},
        "optim": {"lr": 1e-3}, "schedule": {"kind": "cosine", "warmup": 2}, "steps": 1, "eval_every": 0,
        "checkpoint_every": 0, "progress": False, "seed": 3})


def test_task_batches_and_flops(tmp_path):
    task = ByteLMTask(run_config(tmp_path, patch_size=4))
    b = next(task.train_batches(0, 1))
    assert b["ids"].shape == (4, 4 * 32)
    # each position's targets are the bytes K ahead: a row's targets are its own bytes from K on
    assert torch.equal(b["targets"][:, :-4], b["ids"][:, 4:]) and bool(b["mask"].all())
    byte = ByteLMTask(run_config(tmp_path))
    bb = next(byte.train_batches(0, 1))
    assert bb["ids"].shape == (4, 32)
    assert task.eval_batches()[0]["ids"].shape[1] == 32  # held-out rows are byte rows in both phases
    ids = torch.full((4, 128), 9)
    assert bytelm_forward_flops(SMALL, ids, 4) == bytelm_forward_flops(SMALL, torch.full((4, 32), 9), 1)


def test_relative_cost_formula():
    assert relative_cost(4, 2 / 3) == pytest.approx(0.5)
    assert relative_cost(1, 0.3) == pytest.approx(1.0)
    assert relative_cost(2, 1.0) == pytest.approx(0.5)


def test_two_phase_run_cost_transition_and_bundle(tmp_path):
    base = run_config(tmp_path)
    budget = Budget(kind="bytes", value=128 * 12)  # 12 byte-level steps of 4 x 32 bytes
    ref = patch_train(base, PatchTrainConfig(patch_size=1, patch_fraction=0.0), budget, tmp_path / "base")
    res = patch_train(base, PatchTrainConfig(patch_size=4, patch_fraction=2 / 3), budget, tmp_path / "k4")
    assert [p["steps"] for p in res.phases] == [2, 4] and ref.phases[0]["steps"] == 12
    assert res.flops / ref.flops == pytest.approx(relative_cost(4, 2 / 3), rel=0.02)
    assert res.bytes == pytest.approx(ref.bytes, rel=0.02)
    # transition: weights kept (phase 2 starts at phase 1's held-out bpb), schedule restarted with warmup
    p1, p2 = read_metrics(res.phases[0]["dir"]), read_metrics(res.phases[1]["dir"])
    assert p2[0]["step"] == 0 and p2[0]["bpb"] == pytest.approx([r for r in p1 if "bpb" in r][-1]["bpb"], rel=1e-9)
    assert p2[1]["lr"] == pytest.approx(base.optim.lr / base.schedule.warmup)
    meta, model, _ = load_bundle_models(tmp_path / "k4")
    assert meta.kind == "bytelm" and isinstance(model, ByteLM)
    assert (tmp_path / "k4" / "patch_phase" / "bundle.yaml").is_file()


# ---- user mistakes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, -2])
def test_bad_patch_size(k):
    with pytest.raises(ValueError, match=str(k)):
        patch_train_config_from_dict({"patch_size": k})
    with pytest.raises(ValueError, match=f"got {k}"):
        small_model()(torch.full((1, 8), 9), patch_size=k)


@pytest.mark.parametrize("lam", [-0.1, 1.5])
def test_bad_patch_fraction(lam):
    with pytest.raises(ValueError, match=str(lam)):
        patch_train_config_from_dict({"patch_fraction": lam})
    with pytest.raises(ValueError, match=str(lam)):
        relative_cost(4, lam)


def test_budget_too_small_for_each_phase(tmp_path):
    phases = patch_train_phases(run_config(tmp_path), PatchTrainConfig(patch_size=4, patch_fraction=2 / 3))
    with pytest.raises(ValueError, match=r"budget bytes = 300 is too small for one step of each phase: patch phase 512 bytes"):
        plan(phases, Budget(kind="bytes", value=300))


def test_row_not_divisible_by_k(tmp_path):
    with pytest.raises(ValueError, match=r"10 bytes is not divisible by the patch size K=4"):
        small_model()(torch.full((1, 10), 9), patch_size=4)
    with pytest.raises(ValueError, match="patch_row_bytes 10"):
        cfgio.from_dict(ByteLMTaskSettings, {"patch_size": 4, "patch_row_bytes": 10})
    with pytest.raises(ValueError, match="unknown key 'task.patch'"):
        ByteLMTask(run_config(tmp_path, patch=4))


def test_phase_speed_measures_both_phases():
    from bltkit.patchtrain.speed import patchtrain_phase_speed

    r = patchtrain_phase_speed(SMALL, patch_size=4, n_positions=16, batch_size=2, steps=1, warmup=0, device="cpu")
    assert r["patch_bytes_per_s"] > 0 and r["byte_bytes_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["patch_bytes_per_s"] / r["byte_bytes_per_s"])
    with pytest.raises(ValueError, match="got 0"):
        patchtrain_phase_speed(SMALL, patch_size=0)
