"""The patching-strategy comparison (bltkit compare): config errors, the BLT extension hooks, and
the shipped tiny comparison end to end (about a minute and a half on 2 CPU cores)."""
import json
import math

import pytest
import torch

from bltkit import config as cfgio
from bltkit.bundle import load_bundle_models, save_bundle
from bltkit.cli import main
from bltkit.compare.config import CompareConfig, load_compare_config
from bltkit.compare.report import plot_series
from bltkit.compare.runner import run_compare
from bltkit.patching import PatcherConfig
from bltkit.training.blt_init import apply_blt_init
from bltkit.patchtrain.config import ByteLMConfig
from bltkit.patchtrain.model import ByteLM
from bltkit.patchtrain.schedule import relative_cost
from bltkit.training.metrics import read_metrics

VARIANTS = [{"name": "bytes", "kind": "bytelm", "model": "tiny"},
            {"name": "k4", "kind": "bytelm", "model": "tiny", "patch_size": 4, "patch_fraction": 0.5}]


def cfg_of(**kw) -> CompareConfig:
    data = {"budget": {"kind": "bytes", "value": 4096}, "base": {}, "variants": VARIANTS, **kw}
    return cfgio.from_dict(CompareConfig, data, source="test.yaml")


def test_unknown_variant_name_is_named():
    with pytest.raises(ValueError, match="variant 'nope' is not defined"):
        cfg_of().select(["bytes", "nope"])
    assert [v.name for v in cfg_of().select(["k4"])] == ["k4"]


def test_cli_unknown_variant_exits_2(tmp_path, capsys):
    assert main(["compare", "compare-tiny", "--out", str(tmp_path / "o"), "--only", "blt-nope"]) == 2
    assert "blt-nope" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing trained


@pytest.mark.parametrize("variant, message", [
    ({"name": "x", "kind": "bytelm", "patch_size": 0}, "patch_size K must be an integer >= 1, got 0"),
    ({"name": "x", "kind": "bytelm", "patch_fraction": 1.2}, r"patch_fraction λ must be in \[0, 1\], got 1.2"),
    ({"name": "x", "kind": "blt"}, "needs patcher"),
    ({"name": "x", "kind": "bytelm", "patcher": {"scheme": "space"}}, "not patcher"),
    ({"name": "x", "kind": "bytelm", "set": ["data.seq_len=8"]}, "'data.seq_len=8' is not allowed"),
    ({"name": "x", "kind": "bytelm", "colour": 1}, "unknown key 'variants.*colour' in test.yaml"),
    ({"name": "x", "kind": "blt", "patcher": {}}, "needs patcher: {scheme"),
    ({"name": "x", "kind": "blt", "patcher": {"scheme": "space", "colour": 1}},
     r"unknown key 'variants\[0\].patcher.colour' in test.yaml; PatcherConfig accepts: "),
    ({"name": "x", "kind": "blt", "patcher": {"scheme": "bpe"}}, r"'variants\[0\].patcher.scheme' in test.yaml: 'bpe' is not one of"),
    ({"name": "x", "kind": "blt", "patcher": {"scheme": "static", "threshold": 1.0}},
     r"'variants\[0\].patcher' in test.yaml: scheme 'static' takes no threshold \(got 1.0\)"),
    ({"name": "x", "kind": "blt", "patcher": {"scheme": "space"}, "patch_phase_patcher": {"scheme": "static", "patch_size": 0}},
     r"'variants\[0\].patch_phase_patcher' in test.yaml: patch_size must be >= 1, got 0"),
    ({"name": "x", "kind": "hnet", "patcher": {"scheme": "space"}}, "an hnet variant chooses its own chunks"),
    ({"name": "x", "kind": "hnet", "patch_size": 4, "patch_fraction": 0.5}, "no patcher .* patch_fraction"),
])
def test_bad_variant(variant, message):
    with pytest.raises(ValueError, match=message):
        cfg_of(variants=[variant])


def test_variant_patchers_are_typed_and_resolved_as_every_entry_point_resolves_them(tmp_path):
    """A variant's patcher is a PatcherConfig; resolving it puts the shared entropy model and its
    calibrated threshold under the variant's own settings (resolve_patcher's layers)."""
    from bltkit.compare.entropy import EntropyPatching
    from bltkit.patching.config import save_patcher_settings
    from entropy_model.model import EntropyModel, load_entropy_config

    cfg = cfg_of(variants=[{"name": "s", "kind": "blt", "patcher": {"scheme": "static", "patch_size": 6}},
                           {"name": "e", "kind": "blt", "patcher": {"scheme": "entropy", "max_patch_length": 9}}])
    assert cfg.variants[0].patcher == PatcherConfig(scheme="static", patch_size=6)
    shared, own = tmp_path / "shared", tmp_path / "own"
    for d in (shared, own):
        EntropyModel(load_entropy_config("tiny", ["dim=32", "n_heads=2"])).save_pretrained(d)
    save_patcher_settings(own, PatcherConfig(scheme="entropy", threshold=3.25))
    ent = EntropyPatching(cfg, tmp_path, "test.yaml", tmp_path)
    ent.model_dir, ent.threshold = shared, 2.5  # as if trained and calibrated here

    static = ent.resolve(cfg.variants[0].patcher)
    assert (static.scheme, static.patch_size, static.entropy_model) == ("static", 6, None)
    got = ent.resolve(cfg.variants[1].patcher)
    assert (got.threshold, got.max_patch_length, got.entropy_model) == (2.5, 9, str(shared))
    assert ent.resolve(PatcherConfig(scheme="entropy", threshold=1.0)).threshold == 1.0  # the variant's own wins
    mine = ent.resolve(PatcherConfig(scheme="entropy", entropy_model="own"))  # beside the config; its patcher.yaml
    assert (mine.threshold, mine.entropy_model) == (3.25, str(own))
    mono = ent.resolve(PatcherConfig(scheme="monotonic", threshold=0.5))  # a relative θ is never the calibrated global one
    assert (mono.threshold, mono.entropy_model) == (0.5, str(shared))
    with pytest.raises(ValueError, match="test.yaml: variant 'm' patcher: scheme 'monotonic' needs a threshold"):
        ent.resolve(PatcherConfig(scheme="monotonic"), "variant 'm' patcher")


def test_bad_config_level():
    with pytest.raises(ValueError, match="repeated: \\['a'\\]"):
        cfg_of(variants=[{"name": "a", "kind": "bytelm"}, {"name": "a", "kind": "bytelm"}])
    with pytest.raises(ValueError, match="init_global_from 'zzz'"):
        cfg_of(variants=[{"name": "b", "kind": "blt", "patcher": {"scheme": "space"}, "init_global_from": "zzz"}])
    with pytest.raises(ValueError, match="base.steps"):
        cfg_of(base={"steps": 3})
    with pytest.raises(ValueError, match="budget.value must be > 0, got 0"):
        cfg_of(budget={"kind": "flops", "value": 0})


def test_blt_init_from_bytelm_and_unknown_key(tmp_path):
    from bltkit.model.blt import ByteLatentTransformer, load_blt_config

    cfg = load_blt_config("tiny")
    g = cfg.global_model
    lm = ByteLM(ByteLMConfig(dim=g.dim, n_layers=g.n_layers, n_heads=g.n_heads, init_seed=11))
    save_bundle(tmp_path / "lm", lm, "bytelm")
    blt = ByteLatentTransformer(cfg)
    apply_blt_init(blt, {"init_global_from": str(tmp_path / "lm")})
    for k, v in lm.global_transformer.state_dict().items():
        assert torch.equal(blt.global_transformer.state_dict()[k], v)
    save_bundle(tmp_path / "blt", blt, "blt", patcher={"scheme": "space"})
    fresh = ByteLatentTransformer(cfg)
    apply_blt_init(fresh, {"init_from": str(tmp_path / "blt")})
    for k, v in blt.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    with pytest.raises(ValueError, match="unknown key 'task.warm'"):
        apply_blt_init(fresh, {"warm": 1})
    with pytest.raises(FileNotFoundError, match="nowhere"):
        apply_blt_init(fresh, {"init_from": str(tmp_path / "nowhere")})


def test_blt_two_phase_and_global_init_run(tmp_path):
    """The extension end to end at a tiny byte budget: a patch-trained ByteLM (λ=1) initialises a
    BLT's global model, which then runs two phases; only the weights cross the transition (the
    phases share the patcher here so that held-out bpb shows it exactly)."""
    base = {"data": {"train": ["builtin"], "eval": ["builtin/devil:valid"], "limit_bytes": 8000, "seq_len": 32,
                     "batch_size": 4, "eval_rows": 4}, "optim": {"lr": 1e-3}, "progress": False}
    variants = [{"name": "k4", "kind": "bytelm", "model": "tiny", "patch_size": 4, "patch_fraction": 1.0},
                {"name": "blt", "kind": "blt", "model": "tiny", "patcher": {"scheme": "space"}, "init_global_from": "k4",
                 "patch_fraction": 0.5, "patch_phase_patcher": {"scheme": "space"}}]
    cfg = cfgio.from_dict(CompareConfig, {"budget": {"kind": "bytes", "value": 768}, "base": base,
                                          "variants": variants, "eval_points": 1})
    results = run_compare(cfg, tmp_path, only=["blt"])  # k4 runs too: blt needs it
    assert [r.name for r in results] == ["k4", "blt"]
    two = results[1]
    assert [p["name"] for p in two.phases] == ["patch", "main"]
    p1, p2 = read_metrics(two.phases[0]["dir"]), read_metrics(two.phases[1]["dir"])
    assert p2[0]["bpb"] == pytest.approx([r for r in p1 if "bpb" in r][-1]["bpb"], rel=1e-9)  # weights kept
    assert p2[1]["lr"] == pytest.approx(1e-3)  # a fresh schedule (no warmup configured here)
    first = cfgio.read_yaml(tmp_path / "blt" / "patch_phase" / "config.yaml")
    assert first["task"] == {"init_global_from": str((tmp_path / "k4").resolve())}
    meta, _, _ = load_bundle_models(tmp_path / "blt")
    assert meta.kind == "blt" and meta.patcher == PatcherConfig(scheme="space")


def test_even_boundaries_and_hnet_planning_cost():
    """A learned-boundary model is planned at its target: chunks target_ratio real bytes apart,
    counted as training does (hnet_forward_flops), padding opening none."""
    from bltkit.model.hnet_config import load_hnet_config
    from bltkit.training.config import train_config_from_dict
    from bltkit.training.flops import even_boundaries, hnet_forward_flops, training_flops
    from bltkit.training.task import build_task

    valid = torch.tensor([[True] * 10 + [False] * 2, [True] * 12])
    b = even_boundaries(valid, 4.0)
    assert b[0].nonzero().flatten().tolist() == [0, 4, 8] and b[1].nonzero().flatten().tolist() == [0, 4, 8]
    assert even_boundaries(torch.ones(1, 9, dtype=torch.bool), 2.5)[0].nonzero().flatten().tolist() == [0, 3, 5, 8]
    task = build_task(train_config_from_dict({"kind": "hnet", "model": "tiny", "patcher": {},
                                              "data": {"train": ["builtin/devil"], "seq_len": 32, "batch_size": 4,
                                                       "limit_bytes": 4000}}))
    batch = next(task.train_batches(0, 1))
    even = even_boundaries(batch["mask"].bool(), load_hnet_config("tiny").chunking.target_ratio)
    want = training_flops(sum(hnet_forward_flops(task.model_cfg, batch["ids"], even).values()))
    assert task.planning_flops_per_batch(batch) == want > 0
    assert task.flops_per_batch(batch) == 0  # before a step, the real count is unknown: not what plans


def test_shipped_tiny_comparison(tmp_path, capsys):
    """bltkit compare compare-tiny: every variant at a matched FLOP budget, one bundle each."""
    assert main(["compare", "compare-tiny", "--out", str(tmp_path)]) == 0
    cfg, _ = load_compare_config("compare-tiny")
    res = json.loads((tmp_path / "results.json").read_text())
    rows = {r["name"]: r for r in res["variants"]}
    assert list(rows) == [v.name for v in cfg.variants]
    for name, r in rows.items():
        # learned boundaries are planned at their target: what they spend follows what they achieve
        assert r["training_flops"] == pytest.approx(cfg.budget.value, rel=0.3 if r["target_ratio"] else 0.05), name
        assert math.isfinite(r["heldout_bpb"]) and 0 < r["heldout_bpb"] < 9, name
        assert r["bytes_seen"] > 0 and r["parameters"] > 0 and r["wall_clock_s"] > 0
        meta, model, em = load_bundle_models(tmp_path / name)
        assert meta.kind == r["kind"] and model.num_parameters() == r["parameters"]
    # at matched compute the K=4, λ=2/3 run reads 1 / (λ/K + 1 - λ) = 2x the baseline's bytes
    ratio = rows["patch-k4"]["bytes_seen"] / rows["bytes"]["bytes_seen"]
    assert ratio == pytest.approx(1 / relative_cost(4, 0.6667), rel=0.05)
    assert rows["bytes"]["mean_patch_length"] == 1.0 and rows["patch-k4"]["mean_patch_length"] > 1.5
    assert rows["patch-k4"]["bytes_per_patch"] == 4.0 and rows["bytes"]["bytes_per_patch"] == 1.0
    for name in ("blt-entropy", "blt-static4", "blt-space"):  # a BLT's own patches: its mean patch length
        assert rows[name]["bytes_per_patch"] == pytest.approx(rows[name]["mean_patch_length"], rel=0.05), name
        assert rows[name]["target_ratio"] is None and rows[name]["planned_flops"] == pytest.approx(
            rows[name]["training_flops"], rel=0.05), name
    # the H-Net: planned at its target compression to the budget; its bytes a chunk from its metrics
    h = rows["hnet"]
    assert h["kind"] == "hnet" and h["target_ratio"] == 4.0
    assert h["planned_flops"] == pytest.approx(cfg.budget.value, rel=0.05)
    recs = [r for r in read_metrics(h["dir"]) if "bytes_per_chunk" in r]
    assert len(recs) == h["phases"][0]["steps"]
    step_bytes = [b - a for a, b in zip([0] + [r["bytes"] for r in recs], [r["bytes"] for r in recs])]
    assert h["bytes_per_patch"] == pytest.approx(sum(step_bytes) / sum(n / r["bytes_per_chunk"]
                                                                         for n, r in zip(step_bytes, recs)))
    assert h["parameters"] > h["parameters_non_embedding"]
    # the BLT with learned boundaries: planned at its target like the H-Net, its bytes a patch achieved
    lb = rows["blt-learned"]
    assert lb["kind"] == "blt" and lb["patcher"]["scheme"] == "learned" and lb["target_ratio"] == 4.0
    assert lb["planned_flops"] == pytest.approx(cfg.budget.value, rel=0.05) and lb["entropy_flops"] == 0
    assert 1.0 < lb["bytes_per_patch"] < 256.0
    assert load_bundle_models(tmp_path / "blt-learned")[2] is None  # no entropy model: the router is inside
    ent = rows["blt-entropy"]
    assert ent["patcher"]["scheme"] == "entropy" and ent["entropy_flops"] > 0
    assert res["entropy_model"]["calibrated_mean_patch_length"] == pytest.approx(4.5, rel=0.1)
    assert load_bundle_models(tmp_path / "blt-entropy")[2] is not None  # the entropy model travels along
    md = (tmp_path / "results.md").read_text()
    assert all(f"| {n} |" in md for n in rows)
    assert f"| {h['bytes_per_patch']:.2f} (target 4) |" in md and "planned: hnet" in md
    assert [label.split(" ")[0] for label, xs, _ in plot_series(res["variants"]) if xs] == list(rows)
    assert (tmp_path / "bpb_vs_flops.png").read_bytes()[:4] == b"\x89PNG"
    assert "held-out bpb" in capsys.readouterr().out


def test_existing_variant_dir_is_refused(tmp_path):
    (tmp_path / "bytes").mkdir()
    (tmp_path / "bytes" / "x").write_text("x")
    with pytest.raises(ValueError, match="bytes already exists"):
        run_compare(cfg_of(), tmp_path, only=["bytes"])


def test_every_shipped_comparison_loads_with_typed_patchers():
    paths = sorted((cfgio.CONFIG_ROOT / "experiments").glob("*.yaml"))
    assert sorted(p.stem for p in paths) == ["compare-gpu", "compare-gpu-learned", "compare-tiny"]
    for p in paths:
        cfg, _ = load_compare_config(p.stem)
        blt = [v for v in cfg.variants if v.kind == "blt"]
        expected = {"entropy", "static", "space"} | ({"learned"} if p.stem != "compare-gpu" else set())
        assert {v.patcher.scheme for v in blt} == expected, p
        assert all(isinstance(v.patcher, PatcherConfig) for v in blt)
        assert all(v.patcher is None and v.patch_phase_patcher is None for v in cfg.variants if v.kind != "blt")


def test_gpu_config_has_every_kind_at_matched_flops_a_byte():
    """compare-gpu-learned holds every variant kind of compare-tiny (one budget), and its H-Net is
    sized to its BLT's forward FLOPs a byte, each at its target patch or chunk size."""
    from bltkit.model import load_blt_config
    from bltkit.model.hnet_config import load_hnet_config
    from bltkit.training.flops import blt_flops_per_byte, hnet_flops_per_byte

    def kinds(c):
        return {(v.kind, v.patcher.scheme if v.patcher else None, v.patch_size > 1) for v in c.variants}

    gpu, _ = load_compare_config("compare-gpu-learned")
    tiny, _ = load_compare_config("compare-tiny")
    assert kinds(tiny) <= kinds(gpu)
    blt = next(v for v in gpu.variants if v.kind == "blt" and v.patcher.scheme == "entropy")
    hnet = next(v for v in gpu.variants if v.kind == "hnet")
    seq = gpu.base["data"]["seq_len"]
    hcfg = load_hnet_config(hnet.model, hnet.model_overrides)
    h = hnet_flops_per_byte(hcfg, hcfg.chunking.target_ratio, seq)["total"]
    b = blt_flops_per_byte(load_blt_config(blt.model, blt.model_overrides), gpu.entropy.target_mean_patch_length,
                           seq)["total"]
    assert h == pytest.approx(b, rel=0.02)


def _tiny_entropy_model(out, seed):
    from bltkit.training.config import train_config_from_dict
    from bltkit.training.loop import train

    train(train_config_from_dict({"kind": "entropy", "model": "tiny", "steps": 3, "seed": seed, "progress": False,
                                  "eval_every": 0, "checkpoint_every": 0,
                                  "data": {"train": ["builtin/devil"], "seq_len": 32, "batch_size": 4,
                                           "limit_bytes": 4000, "eval_rows": 2}}), out)
    return out / "model"


def test_entropy_variants_patch_from_one_precompute(tmp_path, monkeypatch):
    """Two entropy-patched variants (the calibrated threshold; their own) read one precompute of the base data: the entropy model runs over the corpus once,
    not per variant nor for calibration, and every figure equals on-the-fly patching's. A rerun
    reuses the finished shards; another entropy model replaces them."""
    from entropy_model import precompute as pre
    from entropy_model.model import EntropyModel

    from bltkit.compare.entropy import ENTROPIES_SUBDIR, ENTROPY_DIR, EntropyPatching

    em = _tiny_entropy_model(tmp_path / "em", 1)
    calls = {"precompute": 0, "forward_outside": 0}
    depth = []
    real_precompute, real_forward = pre.precompute, EntropyModel.forward

    def counting_precompute(*args, **kwargs):
        calls["precompute"] += 1
        depth.append(1)
        try:
            return real_precompute(*args, **kwargs)
        finally:
            depth.pop()

    def counting_forward(self, *args, **kwargs):
        if not depth:
            calls["forward_outside"] += 1
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(pre, "precompute", counting_precompute)
    monkeypatch.setattr(EntropyModel, "forward", counting_forward)
    base = {"data": {"train": ["builtin/devil"], "eval": ["builtin/devil:valid"], "limit_bytes": 4000, "seq_len": 32,
                     "batch_size": 4, "eval_rows": 2}, "optim": {"lr": 1e-3}, "progress": False}
    variants = [{"name": "ent", "kind": "blt", "model": "tiny", "patcher": {"scheme": "entropy"}},
                {"name": "ent-own", "kind": "blt", "model": "tiny", "patcher": {"scheme": "entropy", "threshold": 1.5}}]

    def config(precompute, model=em):
        return cfgio.from_dict(CompareConfig, {
            "budget": {"kind": "bytes", "value": 512}, "base": base, "variants": variants, "eval_points": 1,
            "entropy": {"model": str(model), "target_mean_patch_length": 3.0, "calibration_bytes": 2000,
                        "precompute": precompute}})

    shared = run_compare(config(True), tmp_path / "pre")
    assert calls == {"precompute": 1, "forward_outside": 0}
    shards = tmp_path / "pre" / ENTROPY_DIR / ENTROPIES_SUBDIR
    res = json.loads((tmp_path / "pre" / "results.json").read_text())
    assert res["entropy_model"]["precomputed"] == str(shards) and res["entropy_model"]["precomputed_shards_computed"] >= 1
    for name in ("ent", "ent-own"):
        assert cfgio.read_yaml(tmp_path / "pre" / name / "config.yaml")["patcher"]["precomputed"] == str(shards)
    assert cfgio.read_yaml(tmp_path / "pre" / "ent-own" / "config.yaml")["patcher"]["threshold"] == 1.5

    fly = run_compare(config(False), tmp_path / "fly", only=["ent"])  # the model over each variant's batches
    assert calls["precompute"] == 1 and calls["forward_outside"] > 0
    assert json.loads((tmp_path / "fly" / "results.json").read_text())["entropy_model"]["threshold"] == \
        res["entropy_model"]["threshold"]
    a, b = shared[0], fly[0]
    assert a.name == b.name == "ent"
    assert (a.heldout_bpb, a.training_flops, a.bytes_seen, a.mean_patch_length, a.curve) == \
           (b.heldout_bpb, b.training_flops, b.bytes_seen, b.mean_patch_length, b.curve)
    assert [r.get("loss") for r in read_metrics(a.dir)] == [r.get("loss") for r in read_metrics(b.dir)]

    stamp = (shards / "index.json").stat().st_mtime_ns
    again = EntropyPatching(config(True), tmp_path / "pre", "test", None)
    assert again.resolve(PatcherConfig(scheme="entropy")).precomputed == str(shards)
    assert calls["precompute"] == 1 and again.precomputed_shards == 0
    assert (shards / "index.json").stat().st_mtime_ns == stamp  # reused as it was

    # An unfinished set begun in another precision (say on a GPU: bf16) resumes in that precision
    # instead of being refused for the one this device resolves (fp32 on a CPU).
    index = json.loads((shards / "index.json").read_text())
    assert index["settings"]["precision"] == "fp32"
    index["settings"]["precision"], index["finished"] = "bf16", False
    index["shards"] = index["shards"][:-1]
    (shards / "index.json").write_text(json.dumps(index))
    (shards / f"shard-{len(index['shards']):05d}.safetensors").unlink()  # the last shard is redone
    seen = {}
    monkeypatch.setattr(pre, "precompute", lambda *a, **kw: seen.update(kw) or real_precompute(*a, **kw))
    resumed = EntropyPatching(config(True), tmp_path / "pre", "test", None)
    resumed.resolve(PatcherConfig(scheme="entropy"))
    assert seen["precision"] == "bf16" and resumed.precomputed_shards == 1
    assert json.loads((shards / "index.json").read_text())["finished"]

    other = _tiny_entropy_model(tmp_path / "em2", 2)
    swapped = EntropyPatching(config(True, other), tmp_path / "pre", "test", None)
    swapped.resolve(PatcherConfig(scheme="entropy"))
    assert swapped.precomputed_shards >= 1
    index = json.loads((shards / "index.json").read_text())
    assert index["settings"]["weights"] == pre._fingerprint_file(other / "model.safetensors")
