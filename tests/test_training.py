"""The trainer (bltkit.training): schedules, optimiser groups, FLOPs, packing, exact resume, golden
losses, checkpoint safety, bad input and the CLI. Tiny shapes; the whole file runs in seconds."""
from __future__ import annotations

import json
import sys
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from bltkit import config as cfgio
from bltkit.bundle import load_bundle_models, read_bundle
from bltkit.model import ByteLatentTransformer, load_blt_config
from bltkit.patching.lengths import validate_patch_lengths
from bltkit.training import checkpoint as ckpt
from bltkit.training.config import OptimConfig, ScheduleConfig, load_train_config, train_config_from_dict
from bltkit.training.flops import blt_forward_flops, local_pairs
from bltkit.training.loop import TrainingDiverged, split_micro, train
from bltkit.training.metrics import read_metrics
from bltkit.training.optim import parameter_groups
from bltkit.patching import PatcherConfig
from bltkit.training.patch_source import document_patcher
from bltkit.training.schedule import lr_factor
from bltkit.training.task import build_task

pytestmark = pytest.mark.usefixtures("one_thread")


GOLDEN = Path(__file__).parent / "golden" / "tiny_losses.json"
WORDS = ("the byte latent transformer reads raw bytes and groups them into patches of varying "
         "length so that compute follows information ").split()


def _write_corpus(d: Path, n_docs: int = 30, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    d.mkdir(parents=True, exist_ok=True)
    lines = []
    for _ in range(n_docs):
        idx = torch.randint(len(WORDS), (int(torch.randint(20, 60, (1,), generator=g)),), generator=g)
        lines.append(json.dumps({"text": " ".join(WORDS[i] for i in idx.tolist()) + "."}))
    (d / "train.jsonl").write_text("\n".join(lines[:-4]) + "\n")
    (d / "eval.jsonl").write_text("\n".join(lines[-4:]) + "\n")
    return d


def _cfg(tmp: Path, **kw):
    corpus = _write_corpus(tmp / "corpus")
    base = {
        "kind": "blt", "model": "tiny",
        "model_overrides": ["hash.vocab=257", "global_model.n_layers=1", "decoder.n_layers=1"],
        "patcher": {"scheme": "space"},
        "data": {"train": [str(corpus / "train.jsonl")], "eval": [str(corpus / "eval.jsonl")],
                 "seq_len": 48, "batch_size": 4, "eval_rows": 4},
        "optim": {"lr": 3e-3}, "schedule": {"kind": "cosine", "warmup": 2},
        "steps": 6, "eval_every": 0, "checkpoint_every": 0, "progress": False,
    }
    for k, v in kw.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return train_config_from_dict(base)


# ---- schedules and optimiser --------------------------------------------------------------------
@given(st.sampled_from(["cosine", "wsd", "constant"]), st.integers(0, 50), st.integers(1, 400),
       st.floats(0.0, 1.0), st.floats(0.05, 1.0))
def test_schedule_bounds_and_warmup(kind, warmup, total, min_ratio, frac):
    cfg = ScheduleConfig(kind=kind, warmup=warmup, min_ratio=min_ratio, decay_fraction=frac)
    f = [lr_factor(s, total, cfg) for s in range(total)]
    assert all(min(min_ratio, 1.0) - 1e-12 <= x <= 1.0 + 1e-12 or s < warmup for s, x in enumerate(f))
    assert all(0 < x <= 1.0 for x in f[:warmup])
    assert all(a < b for a, b in zip(f[:warmup], f[1:warmup]))  # warmup rises strictly
    if kind != "constant" and total > warmup + 1:
        tail = f[warmup:]
        assert all(b <= a + 1e-12 for a, b in zip(tail, tail[1:]))  # never rises after warmup


def test_schedule_endpoints():
    cos = ScheduleConfig(kind="cosine", warmup=10, min_ratio=0.1)
    assert lr_factor(9, 100, cos) == pytest.approx(1.0)
    assert lr_factor(10, 100, cos) == pytest.approx(1.0)
    assert lr_factor(55, 100, cos) == pytest.approx(0.55)  # halfway: the mean of 1 and 0.1
    wsd = ScheduleConfig(kind="wsd", warmup=0, min_ratio=0.0, decay_fraction=0.2)
    assert lr_factor(79, 100, wsd) == 1.0 and lr_factor(99, 100, wsd) == pytest.approx(0.0)


def test_parameter_groups():
    model = ByteLatentTransformer(load_blt_config("tiny", ["hash.vocab=17"]))
    everything = parameter_groups(model, OptimConfig())
    assert len(everything) == 1 and everything[0]["weight_decay"] == 0.1  # the reference: decay on all
    split = parameter_groups(model, OptimConfig(no_decay_norms_embeddings=True))
    no_decay = {id(p) for p in split[1]["params"]}
    assert split[1]["weight_decay"] == 0.0
    assert id(model.encoder_hash_tok_embedding.weight) in no_decay
    assert id(model.local_encoder.tok_embeddings.weight) in no_decay
    assert id(model.local_decoder.norm.weight) in no_decay
    assert id(model.local_decoder.output.weight) not in no_decay
    assert sum(len(g["params"]) for g in split) == len(list(model.parameters()))


# ---- FLOPs ----------------------------------------------------------------------------------------
def test_local_pairs_by_hand():
    ids = torch.tensor([[1, 5, 6, 2, 1, 7, 8, 9]])  # EOS at 3: documents [0..3], [4..7]
    # windows of 3, reset at the document start: 1,2,3,3 | 1,2,3,3
    assert local_pairs(ids, window=3, doc_reset=True) == 18
    assert local_pairs(ids, window=None, doc_reset=False) == 36
    assert local_pairs(ids, window=None, doc_reset=True) == 20


def test_blt_flops_match_counted_matmuls():
    """Our linear-layer FLOPs equal what torch's FLOP counter sees for the matrix multiplies."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = load_blt_config("tiny", ["hash.vocab=31", "global_model.n_kv_heads=2"])
    model = ByteLatentTransformer(cfg).eval()
    ids = torch.randint(4, 260, (2, 24))
    pl = torch.tensor([[1, 4, 4, 4, 4, 4, 4], [1, 3, 5, 7, 2, 5, 2]])
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(ids, pl, attn_impl="sdpa")
    counts = counter.get_flop_counts()["Global"]
    matmul = sum(v for k, v in counts.items() if "mm" in str(k) and "scaled_dot" not in str(k))
    ours = blt_forward_flops(cfg, ids, pl, attention=False)
    assert sum(ours.values()) == matmul


def test_global_flops_scale_with_patch_count():
    cfg = load_blt_config("tiny", ["hash.vocab=31"])
    ids = torch.randint(4, 260, (1, 32))
    short = blt_forward_flops(cfg, ids, torch.tensor([[1] + [2] * 16]))
    long = blt_forward_flops(cfg, ids, torch.tensor([[1] + [8] * 4]))
    assert long["global"] < short["global"] / 3  # 5 patches vs 17: linear part scales with patches
    assert long["encoder"] < short["encoder"]  # fewer patch queries


# ---- packing and batches ---------------------------------------------------------------------------
def test_space_patching_matches_reference_rule():
    ids = torch.tensor([1] + [b + 4 for b in b"ab  cd.e"] + [2])
    # starts {0,1} and after the first of each space-like run: ' ' at 3 -> 4, '.' at 7 -> 8; EOS follows 'e'
    fn = document_patcher({"scheme": "space"})
    assert fn(ids).tolist() == [1, 3, 4, 2]
    assert [x.tolist() for x in fn.lengths([ids, ids[:3]])] == [[1, 3, 4, 2], [1, 2]]
    with pytest.raises(cfgio.ConfigError, match="patcher.patch_sise"):
        document_patcher({"scheme": "static", "patch_sise": 3})


def test_task_batches_are_the_data_pipeline_and_split_into_micro_batches(tmp_path):
    """Every row of a BLT run's batches follows the patch conventions (first patch 1, sum N + 1);
    with final_target next every byte of a row but the first is a real target."""
    task = build_task(_cfg(tmp_path))
    it = task.train_batches(0, 1)
    b = next(it)
    validate_patch_lengths(b["patch_lengths"], 48, extra=1, first_one=True)
    assert torch.equal(b["ids"][:, 1:], b["targets"][:, :-1]) and bool(b["mask"].all())
    micro = split_micro(b, 2)
    assert [m["ids"].shape[0] for m in micro] == [2, 2]
    assert torch.equal(torch.cat([m["ids"] for m in micro]), b["ids"])
    with pytest.raises(ValueError, match="not divisible by grad_accum 3"):
        split_micro(b, 3)
    assert sum(int(e["ids"].shape[0]) for e in task.eval_batches()) == 4  # data.eval_rows


# ---- training runs ---------------------------------------------------------------------------------
def test_train_writes_metrics_checkpoints_and_bundle(tmp_path):
    cfg = _cfg(tmp_path, steps=4, checkpoint_every=1, keep_checkpoints=2, eval_every=2)
    res = train(cfg, tmp_path / "run")
    out = tmp_path / "run"
    recs = read_metrics(out)
    assert [r["step"] for r in recs] == [0, 1, 2, 3, 4]
    for r in recs[1:]:
        assert {"loss", "lr", "bytes", "flops", "mean_patch_length", "bytes_per_s"} <= set(r)
    assert [r["step"] for r in recs if "bpb" in r] == [0, 2, 4]
    assert all(b["flops"] > a["flops"] for a, b in zip(recs, recs[1:]))
    assert all(b["bytes"] > a["bytes"] for a, b in zip(recs, recs[1:]))
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [3, 4]  # the last 2 kept
    meta = read_bundle(out)
    assert meta.kind == "blt" and meta.patcher == PatcherConfig(scheme="space")
    _, model, em = load_bundle_models(out)
    assert em is None and isinstance(model, ByteLatentTransformer)
    saved = ckpt.read_checkpoint(ckpt.latest_checkpoint(out))
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved["model_state"][k])
    assert res.bpb[-1][1] < res.bpb[0][1]


def test_resume_reproduces_uninterrupted_losses(tmp_path):
    """Bitwise: same CPU kernels, same data order (a function of the step), restored AdamW state."""
    full = train(_cfg(tmp_path, steps=8, checkpoint_every=4), tmp_path / "full")
    part = train(_cfg(tmp_path, steps=8, checkpoint_every=4), tmp_path / "part", stop_after=5)
    assert part.losses[:5] == full.losses[:5]
    assert not (tmp_path / "part" / "bundle.yaml").exists()  # unfinished
    resumed = train(_cfg(tmp_path, steps=8, checkpoint_every=4), tmp_path / "part", resume=True)
    assert resumed.resumed_from == 4
    assert resumed.losses == full.losses[4:]
    steps = [r["step"] for r in read_metrics(tmp_path / "part")]
    assert steps == list(range(0, 9))  # the interrupted run's step 5 record was replaced


def test_resume_warns_naming_changed_keys(tmp_path, capsys):
    train(_cfg(tmp_path, steps=2), tmp_path / "run")
    capsys.readouterr()
    res = train(_cfg(tmp_path, steps=3, optim={"lr": 1e-3}), tmp_path / "run", resume=True)
    err = capsys.readouterr().err
    assert res.resumed_from == 2 and len(res.losses) == 1
    assert "--resume with a config that differs" in err and "step_000002" in err
    assert "steps: 2 -> 3" in err and "optim.lr: 0.003 -> 0.001" in err
    assert "seed" not in err and "data." not in err  # only the changed keys
    train(_cfg(tmp_path, steps=3, optim={"lr": 1e-3}), tmp_path / "run", resume=True)  # same config: silent
    assert "differs" not in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["wsd", "constant"])
def test_wsd_and_constant_schedules_in_a_run(tmp_path, kind):
    """The LR each step of a real run follows the schedule: 4 steps, warmup 1 (step 0 at the peak);
    wsd decays over the last half (2 steps) linearly to 0.1: 1, 1, 1 - 0.9/2, 0.1."""
    cfg = _cfg(tmp_path, steps=4, schedule={"kind": kind, "warmup": 1, "min_ratio": 0.1, "decay_fraction": 0.5})
    train(cfg, tmp_path / "run")
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run")[1:]]
    factors = [1.0, 1.0, 0.55, 0.1] if kind == "wsd" else [1.0] * 4
    assert lrs == pytest.approx([3e-3 * f for f in factors], rel=1e-9)


def test_no_decay_groups_in_a_run(tmp_path):
    """With optim.no_decay_norms_embeddings the run's AdamW has a second group at weight decay 0
    holding the embedding tables and norms (read back from the checkpoint), and training works."""
    cfg = _cfg(tmp_path, steps=2, optim={"lr": 3e-3, "weight_decay": 0.5, "no_decay_norms_embeddings": True})
    res = train(cfg, tmp_path / "run")
    assert all(math.isfinite(x) for x in res.losses)
    groups = ckpt.read_checkpoint(ckpt.latest_checkpoint(tmp_path / "run"))["optim_state"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    decayed, kept = set(groups[0]["params"]), set(groups[1]["params"])
    assert {"encoder_hash_tok_embedding.weight", "local_encoder.tok_embeddings.weight",
            "local_decoder.norm.weight"} <= kept
    assert "local_decoder.output.weight" in decayed and not decayed & kept
    n_params = sum(1 for _ in ByteLatentTransformer(load_blt_config("tiny", cfg.model_overrides)).parameters())
    assert len(decayed) + len(kept) == n_params


def test_golden_tiny_losses():
    """The first 20 losses of configs/train/tiny.yaml on CPU. Tolerance 2e-3 nats: fp32 CPU kernels
    (oneDNN/MKL, SIMD width, thread count) change reduction order, a ~1e-6 relative difference a
    step that 20 AdamW steps amplify; a change of the model, data or optimiser moves them >1e-2."""
    import tempfile

    golden = json.loads(GOLDEN.read_text())
    cfg = load_train_config(golden["config"], golden["overrides"])  # steps=20, no evaluation / checkpoints
    with tempfile.TemporaryDirectory() as d:
        losses = train(cfg, Path(d) / "run").losses
    assert len(golden["losses"]) == 20
    assert losses == pytest.approx(golden["losses"], abs=2e-3)


def test_grad_accum_matches_one_big_batch(tmp_path):
    a = train(_cfg(tmp_path, steps=3), tmp_path / "a").losses
    b = train(_cfg(tmp_path, steps=3, grad_accum=2), tmp_path / "b").losses
    assert b == pytest.approx(a, abs=1e-5)  # float summation order only


def test_nan_loss_stops_naming_the_step_and_keeps_checkpoint(tmp_path, monkeypatch):
    from bltkit.training.blt_task import BLTTask

    real = BLTTask.loss
    calls = {"n": 0}

    def poisoned(self, model, batch):
        calls["n"] += model.training  # training micro-batches only (evaluation also calls loss)
        nats, n = real(self, model, batch)
        return (nats * float("nan") if calls["n"] == 3 else nats), n

    monkeypatch.setattr(BLTTask, "loss", poisoned)
    with pytest.raises(TrainingDiverged, match="at step 3"):
        train(_cfg(tmp_path, steps=6, checkpoint_every=2), tmp_path / "run")
    latest = ckpt.latest_checkpoint(tmp_path / "run")
    assert latest.name == "step_000002"
    state = ckpt.read_checkpoint(latest)
    assert all(torch.isfinite(v).all() for v in state["model_state"].values())
    model = ByteLatentTransformer.from_pretrained(latest / "model")  # the last good step's weights
    assert model.state_dict().keys() == state["model_state"].keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["model_state"][k]), k


def test_failed_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    seen = []

    def fail_second(stage):
        seen.append(stage)
        if stage == "optimizer" and seen.count("optimizer") == 2:
            raise OSError("No space left on device")

    monkeypatch.setattr(ckpt, "_fault_hook", fail_second)
    with pytest.raises(ckpt.CheckpointWriteError, match="No space left"):
        train(_cfg(tmp_path, steps=6, checkpoint_every=2), tmp_path / "run")
    monkeypatch.setattr(ckpt, "_fault_hook", None)
    found = ckpt.list_checkpoints(tmp_path / "run")
    assert [s for s, _ in found] == [2]  # step 4's half-written directory is not a checkpoint
    assert ckpt.read_checkpoint(found[0][1])["trainer"]["step"] == 2
    resumed = train(_cfg(tmp_path, steps=6, checkpoint_every=2), tmp_path / "run", resume=True)
    assert resumed.resumed_from == 2 and len(resumed.losses) == 4
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))


# ---- bad input -------------------------------------------------------------------------------------
def test_config_typo_names_key_and_file(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("kind: blt\nmodel: tiny\noptim: {lrr: 0.1}\n")
    with pytest.raises(cfgio.ConfigError, match=r"'optim\.lrr'.*run\.yaml"):
        load_train_config(p)


def test_missing_data_path_is_named(tmp_path):
    cfg = _cfg(tmp_path, data={"train": [str(tmp_path / "nope.jsonl")]})
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        train(cfg, tmp_path / "run")


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    cfg = _cfg(tmp_path, data={"train": [str(tmp_path / "empty.txt")]})
    with pytest.raises(ValueError, match="empty corpus"):
        train(cfg, tmp_path / "run")


def test_non_utf8_document_trains(tmp_path):
    (tmp_path / "bin.txt").write_bytes(bytes(range(256)) * 3 + b"\xff\xfe\x80 not utf-8 \xc3")
    cfg = _cfg(tmp_path, steps=2, data={"train": [str(tmp_path / "bin.txt")]})
    res = train(cfg, tmp_path / "run")
    assert all(math.isfinite(x) for x in res.losses)


def test_refuses_to_overwrite_and_tensorboard_missing(tmp_path, monkeypatch):
    train(_cfg(tmp_path, steps=1), tmp_path / "run")
    with pytest.raises(ValueError, match="--resume"):
        train(_cfg(tmp_path, steps=1), tmp_path / "run")
    # tensorboard is an optional extra: without it, asking for it is a clear error naming it.
    for mod in ("tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ValueError, match="tensorboard"):
        train(_cfg(tmp_path, steps=1, tensorboard=True), tmp_path / "tb")


def test_cli_train(tmp_path, capsys):
    from bltkit.cli import main

    cfg = _cfg(tmp_path, steps=2)
    p = tmp_path / "run.yaml"
    cfgio.write_yaml(cfg, p)
    assert main(["train", str(p), "--out", str(tmp_path / "out"), "--set", "steps=3"]) == 0
    assert "held-out bits per byte" in capsys.readouterr().out
    assert read_metrics(tmp_path / "out")[-1]["step"] == 3
    assert main(["train", str(p), "--out", str(tmp_path / "out2"), "--set", "optim.lrr=1"]) == 2
    assert "optim.lrr" in capsys.readouterr().err


# ---- entropy model and entropy patching --------------------------------------------------------
def test_train_entropy_then_blt_with_entropy_patching(tmp_path, capsys):
    from bltkit.cli import main
    from entropy_model.model import EntropyModel

    corpus = _write_corpus(tmp_path / "corpus")
    ecfg = {"kind": "entropy", "model": "tiny", "model_overrides": ["n_layers=1"], "patcher": {},
            "data": {"train": [str(corpus / "train.jsonl")], "eval": [str(corpus / "eval.jsonl")],
                     "seq_len": 48, "batch_size": 4, "eval_rows": 4},
            "optim": {"lr": 3e-3}, "steps": 4, "eval_every": 2, "checkpoint_every": 0, "progress": False}
    p = tmp_path / "entropy.yaml"
    cfgio.write_yaml(ecfg, p)
    assert main(["train-entropy", str(p), "--out", str(tmp_path / "em")]) == 0
    assert "held-out bits per byte" in capsys.readouterr().out
    em = EntropyModel.from_pretrained(tmp_path / "em" / "model")
    assert read_bundle(tmp_path / "em").kind == "entropy"
    recs = read_metrics(tmp_path / "em")
    assert [r["step"] for r in recs if "bpb" in r] == [0, 2, 4] and recs[-1]["flops"] > 0

    cfg = _cfg(tmp_path, steps=2, patcher={"scheme": "entropy", "entropy_model": str(tmp_path / "em"),
                                           "threshold": 5.0})
    train(cfg, tmp_path / "blt")
    meta, model, em2 = load_bundle_models(tmp_path / "blt")
    assert meta.patcher.scheme == "entropy" and meta.patcher.entropy_model == "entropy_model"
    assert meta.patcher.threshold == 5.0
    assert isinstance(em2, EntropyModel)
    for k, v in em.state_dict().items():
        assert torch.equal(v, em2.state_dict()[k])
    last = read_metrics(tmp_path / "blt")[-1]
    assert last["entropy_flops"] > 0 and last["mean_patch_length"] > 1.0


def test_entropy_patching_needs_a_model_dir(tmp_path):
    with pytest.raises(ValueError, match="entropy_model"):
        train(_cfg(tmp_path, patcher={"scheme": "entropy"}), tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        train(_cfg(tmp_path, patcher={"scheme": "entropy", "entropy_model": str(tmp_path / "no-such-dir")}),
              tmp_path / "run")


@pytest.mark.gpu
def test_cuda_bf16_compiled_training_learns(tmp_path):
    """On a GPU: bf16 autocast, FlexAttention masks and compiled blocks train the tiny BLT."""
    cfg = _cfg(tmp_path, steps=30, device="cuda", compile=True, eval_every=30,
               data={"seq_len": 256, "batch_size": 8, "eval_rows": 8})
    res = train(cfg, tmp_path / "run")
    assert res.bpb[-1][1] < res.bpb[0][1] - 1.0


def test_patch_packed_run_resumes_exactly(tmp_path):
    """The reference's patch-count packing with a hash-held-out split: the loader state (numpy
    RNGs, rows packed but not served) round-trips through a checkpoint."""
    corpus = _write_corpus(tmp_path / "corpus")
    data = {"train": [str(corpus / "train.jsonl")], "eval": [], "eval_fraction": 0.2, "packing": "patches",
            "seq_len": 12, "batch_size": 4, "shuffle_buffer": 4}
    full = train(_cfg(tmp_path, steps=6, checkpoint_every=3, data=data), tmp_path / "full")
    train(_cfg(tmp_path, steps=6, checkpoint_every=3, data=data), tmp_path / "part", stop_after=4)
    resumed = train(_cfg(tmp_path, steps=6, checkpoint_every=3, data=data), tmp_path / "part", resume=True)
    assert resumed.resumed_from == 3 and resumed.losses == full.losses[3:]


@pytest.mark.parametrize("path", sorted((cfgio.CONFIG_ROOT / "train").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_train_configs_load_and_build(path):
    cfg = load_train_config(path)
    task = build_task(cfg, path.parent)
    assert task.kind == cfg.kind
    assert sum(p.numel() for p in task.build_model().parameters()) > 0
