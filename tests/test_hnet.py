"""The ``hnet`` model kind (docs/hnet.md): configs, causality, cached generation, gradients into the
router, FLOPs, training toward the target compression, bundles, bad input. CPU, micro models."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import bltkit
from bltkit import config as cfgio
from bltkit.cli import main
from bltkit.data.vocab import EOS_ID
from bltkit.inference.api import Handle
from bltkit.model import hnet as hnet_mod
from bltkit.model.hnet import HNet
from bltkit.model.hnet_config import hnet_config_from_dict, load_hnet_config
from bltkit.nn.chunking import upcast
from bltkit.training.metrics import read_metrics
from routing_checks import assert_later_bytes_never_change_earlier, directional_derivatives, random_ids

pytestmark = pytest.mark.usefixtures("one_thread")

STACK = {"n_layers": 1, "n_heads": 2, "ffn_hidden": 32}
MICRO = {"encoder": {"dim": 16, "window": 8, **STACK}, "main": {"dim": 24, **STACK},
         "decoder": {"dim": 16, "window": 8, **STACK}, "chunking": {"target_ratio": 3.0}}


def micro(seed: int = 0, spread: bool = True, **over) -> HNet:
    """A micro H-Net; ``spread`` randomises the router (about half the bytes open chunks), the
    residual weight and the width padding, so every path carries signal."""
    data = {k: dict(v) for k, v in MICRO.items()}
    for k, v in over.items():
        data.setdefault(k, {}).update(v) if isinstance(v, dict) else data.__setitem__(k, v)
    torch.manual_seed(seed)
    model = HNet(hnet_config_from_dict(data))
    if spread:
        with torch.no_grad():
            model.router.q_proj.weight.normal_()
            model.router.k_proj.weight.normal_()
            model.residual.proj.weight.normal_(std=0.2)
            model.main_pad.normal_()
    return model.eval()


# ---- configs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("item, message", [
    ("chunking.target_ratio=0.5", "chunking.target_ratio must be a number of bytes a chunk > 1"),
    ("chunking.target_ratio=1", "got 1.0"),
    ("chunking.ratio_loss_weight=-1", "ratio_loss_weight must be a finite number >= 0, got -1.0"),
    ("chunking.target=4", "unknown key 'chunking.target'"),
    ("main.dim=32", "main.dim 32 < encoder.dim 64"),
    ("main.window=16", "main.window must be null, got 16"),
    ("decoder.doc_reset=false", "must agree"),
    ("lr_multipliers=[1.0]", "lr_multipliers must be two positive numbers"),
])
def test_config_errors_name_the_value(item, message):
    with pytest.raises(cfgio.ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_hnet_config("tiny", [item])


def test_cli_rejects_a_target_ratio_below_one_in_one_line(tmp_path, capsys):
    assert main(["train", "hnet-tiny", "--out", str(tmp_path / "o"), "--set", "model_overrides=[chunking.target_ratio=0.5]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chunking.target_ratio" in err[0] and "got 0.5" in err[0] and "Traceback" not in err[0]
    assert main(["train", "hnet-tiny", "--out", str(tmp_path / "p"), "--set", "task={patch_size: 4}"]) == 2
    assert "task: is not read by kind 'hnet'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["tiny", "bench-s"])
def test_shipped_configs_build(name):
    cfg = load_hnet_config(name)
    with torch.device("meta"):
        model = HNet(cfg)
    assert model.num_parameters() > 0 and model.main_pad.numel() == cfg.main.dim - cfg.encoder.dim


def test_bench_s_matches_the_blt_bench_s_flops_per_byte():
    from bltkit.model.blt import load_blt_config
    from bltkit.training.flops import blt_flops_per_byte, hnet_flops_per_byte

    h = load_hnet_config("bench-s")
    blt = blt_flops_per_byte(load_blt_config("bench-s"), 4.5, 4096)["total"]
    ours = hnet_flops_per_byte(h, h.chunking.target_ratio, 4096)["total"]
    assert abs(ours / blt - 1) < 0.03, (ours, blt)


def test_flops_count_the_chosen_chunks_by_hand():
    from bltkit.training.flops import hnet_forward_flops

    cfg = hnet_config_from_dict({"encoder": {"dim": 16, "n_layers": 0, "n_heads": 2}, "decoder": {"dim": 16, "n_layers": 0, "n_heads": 2},
                                 "main": {"dim": 24, "n_layers": 1, "n_heads": 2, "ffn_hidden": 32}})
    ids = torch.full((1, 8), 9)
    ids[0, 2] = EOS_ID  # documents [0, 0, 0, 1, 1, 1, 1, 1]
    bnd = torch.zeros(1, 8, dtype=torch.bool)
    bnd[0, [0, 3, 5]] = True  # chunk documents [0, 1, 1]: 1 + 1 + 2 attention pairs
    f = hnet_forward_flops(cfg, ids, bnd)
    per_chunk = 2 * 2 * 24 * 24 * 2 + 2 * 3 * 24 * 32  # wq, wo, wk, wv; w1, w3, w2
    assert f["main"] == 3 * per_chunk + 4 * (4 * 2 * 12)
    assert f["chunking"] == 8 * 3 * 2 * 16 * 16 + 3 * 4 * 16  # router + residual a byte, EMA a chunk
    assert f["decoder"] == 8 * 2 * 16 * 260 and f["encoder"] == 0


def test_lr_multipliers_reach_the_optimizer_groups():
    from bltkit.training.config import OptimConfig
    from bltkit.training.optim import build_optimizer
    from bltkit.training.schedule import set_lr

    model = micro(spread=False)
    outer, inner = model.config.stage_lr_multipliers
    assert (outer, inner) == pytest.approx((math.sqrt(4.6 * 24 / 16), math.sqrt(4.6 / 3.0)))
    opt = build_optimizer(model, OptimConfig(no_decay_norms_embeddings=True))
    main_ids = {id(p) for n, p in model.named_parameters() if n.startswith(("main.", "main_pad"))}
    for g in opt.param_groups:
        assert g["lr_mult"] == (inner if id(g["params"][0]) in main_ids else outer)
        assert all((id(p) in main_ids) == (g["lr_mult"] == inner) for p in g["params"])
    set_lr(opt, 1e-3, 0.5)
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx(sorted({5e-4 * inner, 5e-4 * outer}))
    explicit = micro(spread=False, lr_multipliers=[2.0, 0.5])
    assert explicit.config.stage_lr_multipliers == (2.0, 0.5)


# ---- causality and caching -------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(12, 40), data=st.data())
def test_later_bytes_never_change_earlier_logits(seed, n, data):
    assert_later_bytes_never_change_earlier(CAUSAL_MODEL, seed, n, data.draw(st.integers(0, n - 2)))


CAUSAL_MODEL = micro(seed=3)


def test_micro_model_chunks_about_half_the_bytes():
    with torch.no_grad():
        out = CAUSAL_MODEL(random_ids(torch.Generator().manual_seed(0), 2, 200), return_routing=True)
    assert 0.2 < out.routing.boundary.float().mean() < 0.8  # the tests above exercise chunking


def test_cached_steps_equal_the_full_forward_over_300_bytes():
    model = micro(seed=1)
    g = torch.Generator().manual_seed(1)
    ids = random_ids(g, 2, 300, eos_every=70)
    with torch.no_grad():
        full = model(ids, return_routing=True)
        cache = model.new_cache(2, 300)
        valid = torch.ones(2, 37, dtype=torch.bool)
        valid[1, 30:] = False  # a ragged prefill: row 1 has 30 bytes
        first = model(ids[:, :37].clone().masked_fill_(~valid, 0), cache=cache, valid=valid, return_routing=True)
        outs, bnds = [first.logits[0, :37]], [first.routing.boundary[0, :37]]
        row1, b1 = [first.logits[1, :30]], [first.routing.boundary[1, :30]]
        # Row 0 steps from byte 37, row 1 from byte 30: feed each its own next byte.
        at = torch.tensor([37, 30])
        while int(at.min()) < 300:
            live = at < 300
            step = model(ids[torch.arange(2), at.clamp(max=299)][:, None], cache=cache, valid=live[:, None],
                         return_routing=True)
            for r, (lo, bo) in enumerate(((outs, bnds), (row1, b1))):
                if live[r]:
                    lo.append(step.logits[r, :1])
                    bo.append(step.routing.boundary[r, :1])
            at = at + live.long()
    for r, (lo, bo) in enumerate(((outs, bnds), (row1, b1))):
        assert torch.equal(torch.cat(bo), full.routing.boundary[r])
        torch.testing.assert_close(torch.cat(lo), full.logits[r], atol=1e-4, rtol=1e-4)
    assert int(cache.n_chunks[0]) == int(full.routing.boundary[0].sum())


def test_cached_generation_equals_recomputation_and_batching():
    """The handle's cached path against its recomputing one (the whole prefix every byte) on a
    shorter run than the 300 bytes above, which compare the same two computations directly."""
    h = Handle(micro(seed=2), kind="hnet")
    cached = h.generate("The cat sat", max_new_bytes=96, return_bytes=True)
    assert len(cached) >= 80  # EOS is rare for this model: most of the bytes come out
    assert cached == h.generate("The cat sat", max_new_bytes=96, return_bytes=True, use_cache=False)
    prompts = ["a", "longer prompt here", ""]
    kw = dict(max_new_bytes=40, temperature=0.9, top_p=0.95, seed=[1, 2, 3], return_bytes=True)
    batched = h.generate(prompts, **kw)
    alone = [h.generate(p, max_new_bytes=40, temperature=0.9, top_p=0.95, seed=s, return_bytes=True)
             for p, s in zip(prompts, [1, 2, 3])]
    assert batched == alone


# ---- gradients -------------------------------------------------------------------------------------
def _objective(model: HNet, ids: torch.Tensor, alpha: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    from bltkit.nn.chunking import ratio_loss

    out = model(ids[:, :-1], return_routing=True)
    ce = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), ids[:, 1:].reshape(-1))
    return ce + alpha * ratio_loss(out.routing.boundary, out.routing.prob, model.config.chunking.target_ratio), \
        out.routing.boundary


def test_gradients_reach_the_router_projections():
    model = micro(seed=4).train()
    ids = random_ids(torch.Generator().manual_seed(4), 2, 64)
    for alpha in (0.0, 0.03):  # the cross-entropy alone reaches them (EMA and STE), and with the ratio loss
        model.zero_grad()
        _objective(model, ids, alpha)[0].backward()
        for w in (model.router.q_proj.weight, model.router.k_proj.weight):
            assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_router_gradient_matches_finite_differences_in_float64(monkeypatch):
    """The straight-through confidence is a surrogate (its forward is exactly 1), so the check
    runs with it taken out: the gradient into the router through the EMA's P and the ratio loss's
    G must then be the true derivative of the loss."""
    monkeypatch.setattr(hnet_mod, "combine", lambda z, c, r: upcast(z) + upcast(r))
    model = micro(seed=5).double().train()
    ids = random_ids(torch.Generator().manual_seed(5), 2, 40)
    ws = [model.router.q_proj.weight, model.router.k_proj.weight]
    analytic, numeric = directional_derivatives(lambda: _objective(model, ids, alpha=0.5), ws)
    assert abs(analytic) > 1e-6
    assert numeric == pytest.approx(analytic, rel=1e-4, abs=1e-9)


# ---- training --------------------------------------------------------------------------------------
def _run_cfg(steps: int, **kw):
    from bltkit.training.config import train_config_from_dict

    data = {"kind": "hnet", "model": "tiny", "patcher": {},
            "model_overrides": ["encoder.n_layers=1", "decoder.n_layers=1", "main.n_layers=1", "encoder.dim=32",
                                "decoder.dim=32", "main.dim=64", "encoder.n_heads=2", "decoder.n_heads=2"]
            + kw.pop("overrides", []),
            "data": kw.pop("data", {"train": ["builtin/devil"], "seq_len": 128, "batch_size": 4, "eval_rows": 8}),
            "optim": {"lr": 3e-3}, "schedule": {"kind": "constant", "warmup": 5}, "steps": steps,
            "eval_every": 0, "checkpoint_every": 0, "progress": False, "cpu_threads": 1, **kw}
    return train_config_from_dict(data)


SMALL_DATA = {"train": ["builtin/devil"], "seq_len": 64, "batch_size": 4, "eval_rows": 4}


def _held_out_bytes_per_chunk(task, model) -> float:
    chunks = real = 0
    with torch.no_grad():
        for b in task.eval_batches():
            out = model(b["ids"], valid=b["mask"].bool(), return_routing=True)
            chunks += int(out.routing.boundary.sum())
            real += int(b["mask"].sum())
    return real / chunks


def test_training_drives_compression_to_the_target_and_bpb_down(tmp_path):
    """A short CPU run on the built-in corpus. With attention-only encoder and decoder the
    paper's weight (0.03) settles below the target (docs/hnet.md), so this run weighs the ratio
    loss more (1.0) to hold the achieved compression at the target."""
    from bltkit.training.loop import train
    from bltkit.training.task import build_task

    # The 100 steps read 400 rows; shuffled together (data.shuffle_buffer), the batches are not
    # consecutive entries of one stretch of the dictionary, which the achieved ratio is sensitive to.
    data = {"train": ["builtin/devil"], "seq_len": 128, "batch_size": 4, "eval_rows": 8, "shuffle_buffer": 400}
    cfg = _run_cfg(100, overrides=["chunking.ratio_loss_weight=1.0", "chunking.target_ratio=4.0"], data=data)
    task = build_task(cfg)
    torch.manual_seed(cfg.seed)
    start = _held_out_bytes_per_chunk(task, task.build_model().eval())
    res = train(cfg, tmp_path / "run")
    assert res.bpb[-1][1] < res.bpb[0][1] - 2.0  # held-out bits per byte fall (8.8 -> about 3.9)
    end = _held_out_bytes_per_chunk(task, HNet.from_pretrained(tmp_path / "run" / "model"))
    assert abs(start / 4.0 - 1) > 0.5  # far from the target at initialisation...
    assert abs(end / 4.0 - 1) < 0.15, (start, end)  # ...and within 15% of it after training
    recs = [r for r in read_metrics(tmp_path / "run") if r["step"] > 0]
    for r in recs:
        for k in ("ratio_loss", "bytes_per_chunk", "boundary_fraction", "mean_patch_length", "loss"):
            assert isinstance(r[k], float) and math.isfinite(r[k]), (k, r)
        assert r["bytes_per_chunk"] == pytest.approx(1 / r["boundary_fraction"])
    assert all(b["flops"] > a["flops"] for a, b in zip(recs, recs[1:]))

    lm = bltkit.load(tmp_path / "run")
    text = lm.generate("The ", max_new_bytes=24)
    assert "".join(lm.stream("The ", max_new_bytes=24)) == text
    s = lm.score("The devil is in the details.")
    assert 0 < s.bits_per_byte < 8 and len(s.surprisal) == len("The devil is in the details.")
    p = lm.patch("The quick brown fox jumps over the lazy dog.")
    assert b"".join(p.pieces) == b"The quick brown fox jumps over the lazy dog."
    assert sum(p.lengths) == 1 + 44 and len(p.boundary_probs) == 45
    opened = [i for i, v in enumerate(p.boundary_probs) if v > 0.5 or i == 0]
    assert [sum(p.lengths[:k]) for k in range(len(p.lengths))] == opened


def test_resume_is_exact_in_bf16(tmp_path):
    from bltkit.training.loop import train

    kw = dict(precision="bf16", checkpoint_every=2, data=SMALL_DATA)
    whole = train(_run_cfg(4, **kw), tmp_path / "a")
    train(_run_cfg(4, **kw), tmp_path / "b", stop_after=2)
    rest = train(_run_cfg(4, **kw), tmp_path / "b", resume=True)
    assert rest.resumed_from == 2 and rest.losses == whole.losses[2:]
    assert [r["bytes_per_chunk"] for r in read_metrics(tmp_path / "b")[1:]] == \
        [r["bytes_per_chunk"] for r in read_metrics(tmp_path / "a")[1:]]


def test_collapsed_compression_is_a_warning_not_a_nan(tmp_path, monkeypatch, capsys):
    from bltkit.training.hnet_task import HNetTask
    from bltkit.training.loop import train
    from bltkit.training.task import build_task

    build = HNetTask.build_model

    def no_boundaries(self):
        model = build(self)
        with torch.no_grad():
            model.router.k_proj.weight.zero_()  # cos = 0, p = 0.5 everywhere: no boundary (strict)
        return model

    monkeypatch.setattr(HNetTask, "build_model", no_boundaries)
    res = train(_run_cfg(1, data=SMALL_DATA), tmp_path / "run")
    rec = read_metrics(tmp_path / "run")[-1]
    assert "4 of 4 rows have no chunk beyond the forced starts" in rec["warning"] and math.isfinite(rec["ratio_loss"])
    assert all(math.isfinite(x) for x in res.losses)
    assert "warning: step 1: compression collapsed" in capsys.readouterr().err

    task = build_task(_run_cfg(1, data=SMALL_DATA))
    model = build(task)
    with torch.no_grad():
        model.router.q_proj.weight.copy_(-torch.eye(32))  # p = (1 + cos) / 2 of similar states: all open
    batch = next(iter(task.train_batches(0, 1)))
    batch = dict(batch, ids=torch.full_like(batch["ids"], ord("e") + 4))  # one byte repeated: neighbours alike
    nats, n, penalty = task.loss(model, batch)
    assert torch.isfinite(nats) and torch.isfinite(penalty)
    rec = task.step_metrics(task.step_stats())
    assert "every byte opening a chunk" in rec["warning"] and rec["bytes_per_chunk"] < 1.5


# ---- bundles and bad input -------------------------------------------------------------------------
def test_bundle_round_trip_and_bad_input(tmp_path):
    from bltkit.bundle import save_bundle

    model = micro(seed=7)
    save_bundle(tmp_path / "b", model, "hnet", patcher={})
    lm = bltkit.load(tmp_path / "b", max_context=64)
    ids = random_ids(torch.Generator().manual_seed(7), 1, 50)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids), model(ids))
    with pytest.raises(ValueError, match="max_context 64"):
        lm.generate("x" * 60, max_new_bytes=10)
    with pytest.raises(ValueError, match="over max_context 64"):
        lm.patch("y" * 80)
    with pytest.raises(ValueError, match="ids must be"):
        model(torch.zeros(3, dtype=torch.int64) + 5)
    with pytest.raises(ValueError):
        model(torch.full((1, 4), 300))
    (tmp_path / "b" / "model" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        bltkit.load(tmp_path / "b")


def test_bf16_autocast_keeps_the_router_and_logits_fp32():
    model = micro(seed=8)
    ids = random_ids(torch.Generator().manual_seed(8), 2, 40)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, return_routing=True)
    assert out.logits.dtype == torch.float32 and out.routing.prob.dtype == torch.float32
    assert torch.isfinite(out.logits).all()
