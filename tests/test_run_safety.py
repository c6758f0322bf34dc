"""Runs that cannot clobber each other, and one clear line (no traceback) for a user's mistake.

Each test reproduces one way a run directory, a checkpoint or a bundle could be lost or mixed, or
one bad input that printed a traceback, and shows what bltkit does instead.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bltkit import config as cfgio
from bltkit.cli import main
from bltkit.training import checkpoint as ckpt
from bltkit.training.loop import train
from bltkit.training.metrics import read_metrics

from test_training import _cfg

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parent.parent


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def _wait_for(cond, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    """Poll ``cond`` until true; fail if ``proc`` dies first or after ``timeout`` seconds."""
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the subprocess exited ({proc.returncode}) before {what}: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- 1. one process a run directory --------------------------------------------------------------
def test_lock_names_holder_and_a_killed_holder_leaves_no_stuck_lock(tmp_path):
    """A process holding the lock is SIGKILLed: the kernel drops the flock, so the next one gets it."""
    from bltkit.rundir import LOCK_FILE, RunDirLocked, locked

    d = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom bltkit.rundir import locked\n"
         f"with locked({str(d)!r}):\n    print('locked', flush=True)\n    time.sleep(600)\n"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"  # the barrier: it holds the lock now
        with pytest.raises(RunDirLocked, match=rf"{d}.*pid {holder.pid}\)"):
            with locked(d):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with locked(d):  # released by the kill: no stale lock to clear by hand
        assert (d / LOCK_FILE).read_text().strip() == str(os.getpid())
    with locked(d):  # and released again on a normal exit
        pass


def test_second_run_is_refused_then_the_killed_one_resumes(tmp_path):
    """Two ``bltkit train`` with one --out: the second stops at once naming the first's pid and
    touches nothing; SIGKILL the first mid-run and a resume there continues from its checkpoint."""
    cfg = _cfg(tmp_path, steps=100000, checkpoint_every=1, keep_checkpoints=2)
    p = tmp_path / "run.yaml"
    cfgio.write_yaml(cfg, p)
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "bltkit.cli", "train", str(p), "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait_for(lambda: ckpt.latest_checkpoint(out) is not None, first, "the first checkpoint")
        cfg_before = (out / "config.yaml").read_text()
        for flags in ([], ["--resume"], ["--force"]):
            err = _run_cli(["train", str(p), "--out", str(out), "--set", "seed=2", *flags])
            line = _one_error_line(err)
            assert str(out) in line and f"pid {first.pid}" in line and "in use" in line
        assert (out / "config.yaml").read_text() == cfg_before  # the second run wrote nothing
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    latest = ckpt.list_checkpoints(out)[-1][0]
    resumed = train(_cfg(tmp_path, steps=latest + 2, checkpoint_every=1), out, resume=True)
    assert resumed.resumed_from == latest and len(resumed.losses) == 2
    assert [r["step"] for r in read_metrics(out)] == list(range(latest + 3))


def _run_cli(argv: list[str]) -> str:
    """Run ``bltkit`` in-process, expecting exit status 2; its stderr."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(argv) == 2
    return err.getvalue()


# ---- 2. an existing bundle is not replaced silently ---------------------------------------------
def test_train_refuses_an_existing_bundle_unless_force(tmp_path):
    out = tmp_path / "run"
    train(_cfg(tmp_path, steps=2), out)
    ckpt_dir = out / ckpt.CHECKPOINTS
    import shutil

    shutil.rmtree(ckpt_dir)  # a finished run whose checkpoints were deleted (or a convert output)
    weights = (out / "model" / "model.safetensors").read_bytes()
    metrics = (out / "metrics.jsonl").read_text()
    for resume in (False, True):
        with pytest.raises(ValueError, match=rf"{out}.*bundle.*--force"):
            train(_cfg(tmp_path, steps=3, seed=5), out, resume=resume)
    assert (out / "model" / "model.safetensors").read_bytes() == weights
    assert (out / "metrics.jsonl").read_text() == metrics
    (out / "notes.txt").write_text("mine")
    p = tmp_path / "run.yaml"
    cfgio.write_yaml(_cfg(tmp_path, steps=3, seed=5), p)
    assert main(["train", str(p), "--out", str(out), "--force"]) == 0
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2, 3]
    assert (out / "model" / "model.safetensors").read_bytes() != weights
    assert (out / "notes.txt").read_text() == "mine"  # --force deletes a run's outputs only
    with pytest.raises(ValueError, match="give one of them"):
        train(_cfg(tmp_path, steps=3), out, resume=True, force=True)


# ---- 4. resume: a corrupt newest checkpoint, none at all, fewer steps than done ------------------
def test_resume_falls_back_past_a_corrupt_newest_checkpoint(tmp_path, capsys):
    full = train(_cfg(tmp_path, steps=6, checkpoint_every=2), tmp_path / "full")
    out = tmp_path / "part"
    train(_cfg(tmp_path, steps=6, checkpoint_every=2), out, stop_after=4)
    bad = out / ckpt.CHECKPOINTS / "step_000004" / "model" / "model.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    capsys.readouterr()
    resumed = train(_cfg(tmp_path, steps=6, checkpoint_every=2), out, resume=True)
    err = capsys.readouterr().err
    assert str(bad) in err and "step_000002" in err
    assert resumed.resumed_from == 2 and resumed.losses == full.losses[2:]


def test_resume_with_every_checkpoint_corrupt_names_them(tmp_path):
    out = tmp_path / "run"
    train(_cfg(tmp_path, steps=4, checkpoint_every=2), out, stop_after=4)
    files = []
    for _, d in ckpt.list_checkpoints(out):
        f = d / ckpt.OPTIM_FILE
        f.write_bytes(b"\x00" * 10)
        files.append(f)
    with pytest.raises(ValueError, match="no checkpoint.*reads back") as e:
        train(_cfg(tmp_path, steps=4, checkpoint_every=2), out, resume=True)
    assert all(str(f) in str(e.value) for f in files)


def test_resume_with_no_checkpoint_says_so(tmp_path, capsys):
    out = tmp_path / "new"
    res = train(_cfg(tmp_path, steps=2), out, resume=True)
    assert res.resumed_from is None and len(res.losses) == 2
    assert f"no checkpoint in {out} yet; starting at step 0" in capsys.readouterr().err


def test_resume_with_fewer_steps_than_done_is_refused(tmp_path):
    out = tmp_path / "run"
    train(_cfg(tmp_path, steps=4, checkpoint_every=2), out)
    saved = (out / "config.yaml").read_text()
    with pytest.raises(ValueError, match="step 4, past steps=2"):
        train(_cfg(tmp_path, steps=2), out, resume=True)
    assert (out / "config.yaml").read_text() == saved


# ---- 6. one line, nothing left behind ------------------------------------------------------------
def test_disk_full_during_checkpoint_save_is_one_line_and_leaves_no_tmp(tmp_path, monkeypatch, capsys):
    real = ckpt.save_file
    calls = {"model": 0}

    def writer(tensors, path, *a, **kw):
        if path.endswith("model.safetensors"):
            calls["model"] += 1
            if calls["model"] == 2:  # the second checkpoint: the disk is full
                Path(path).write_bytes(b"\x00" * 64)  # a part-written file in the .tmp directory
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, path, *a, **kw)

    monkeypatch.setattr(ckpt, "save_file", writer)
    p = tmp_path / "run.yaml"
    cfgio.write_yaml(_cfg(tmp_path, steps=6, checkpoint_every=2), p)
    capsys.readouterr()
    assert main(["train", str(p), "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "step_000004" in line and "step_000002" in line
    assert not list((tmp_path / "out" / ckpt.CHECKPOINTS).glob(".tmp-*"))
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "out")] == [2]
    assert ckpt.read_checkpoint(ckpt.latest_checkpoint(tmp_path / "out"))["trainer"]["step"] == 2


@pytest.mark.parametrize("command", ["train", "precompute"])
def test_out_naming_an_existing_file_is_one_line(tmp_path, capsys, command):
    f = tmp_path / "taken"
    f.write_text("not a directory")
    if command == "train":
        p = tmp_path / "run.yaml"
        cfgio.write_yaml(_cfg(tmp_path, steps=1), p)
        argv = ["train", str(p), "--out", str(f)]
    else:
        argv = ["precompute", "builtin", "--entropy-model", str(_tiny_entropy_model(tmp_path)), "--out", str(f)]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"--out {f} exists and is not a directory" in line
    assert f.read_text() == "not a directory"


def _tiny_entropy_model(tmp_path: Path) -> Path:
    from entropy_model.model import EntropyModel, load_entropy_config

    d = tmp_path / "em"
    if not (d / "model.safetensors").is_file():
        torch.manual_seed(0)
        EntropyModel(load_entropy_config("tiny", ["n_layers=1"])).save_pretrained(d)
    return d


# ---- 3. precompute: the index records what its shards were computed with -------------------------
def test_precompute_rerun_with_other_settings_is_refused(tmp_path):
    import shutil

    from entropy_model.precompute import precompute

    em = _tiny_entropy_model(tmp_path)
    data = tmp_path / "docs"
    data.mkdir()
    for i in range(3):
        (data / f"d{i}.txt").write_bytes(f"document {i}: a few words to patch. ".encode() * 4)
    out = tmp_path / "pc"
    quiet = dict(shard_docs=2, log=lambda *_: None)
    first = precompute(em, [str(data)], out, threshold=1.0, **quiet)
    assert first["settings"]["patcher"]["threshold"] == 1.0
    index = (out / "index.json").read_text()
    with pytest.raises(ValueError, match=r"other settings \(patcher: .*'threshold': 1\.0.*'threshold': 3\.0"):
        precompute(em, [str(data)], out, threshold=3.0, **quiet)
    assert (out / "index.json").read_text() == index  # statistics and patcher still agree
    other = tmp_path / "em-other"  # the same weights under another config: other entropies
    shutil.copytree(em, other)
    cfg = cfgio.read_yaml(other / "config.yaml")
    cfgio.write_yaml(dict(cfg, window=8), other / "config.yaml")
    with pytest.raises(ValueError, match=r"other settings \(model_config"):
        precompute(other, [str(data)], out, threshold=1.0, **quiet)
    assert precompute(em, [str(data)], out, threshold=1.0, **quiet)["computed"] == 0  # same settings: resumes


# ---- 5. byte caps cut inside a document -----------------------------------------------------------
def test_sample_and_limit_bytes_cut_inside_one_long_document(tmp_path, capsys):
    from entropy_model.calibrate import calibrate_directory
    from entropy_model.precompute import precompute

    em = _tiny_entropy_model(tmp_path)
    line = tmp_path / "one-line.txt"
    line.write_bytes(b"a single line with no breaks at all " * 8000)  # 288 KB, one document
    res = calibrate_directory(em, [str(line)], 3.0, sample_bytes=5000, write=False)
    assert (res.documents, res.ids) == (1, 5000 + 2)
    index = precompute(em, [str(line)], tmp_path / "pc", limit_bytes=5000, threshold=1.0, log=lambda *_: None)
    assert index["stats"][str(line)]["bytes"] == 5000 and index["documents"] == 1
    for argv in (["calibrate", "--entropy-model", str(em), "--sample-bytes", "0", str(line)],
                 ["precompute", "--entropy-model", str(em), "--limit-bytes", "0", "--out", str(tmp_path / "pc0"),
                  str(line)]):
        assert main(argv) == 2
        assert "bytes >= 1" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "pc0").exists()  # refused before anything was written


# ---- 6 / 8. config values from the command line ---------------------------------------------------
def test_malformed_yaml_in_set_is_one_line_naming_the_override(tmp_path, capsys):
    argv = ["train", "tiny", "--out", str(tmp_path / "out"), "--set", "optim={lr: ["]
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "override 'optim={lr: ['" in line and "not valid YAML" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("item,key", [("optim.lrr=1", "optim.lrr"), ("nosuch=1", "nosuch"),
                                      ("optim={lrr: 1}", "optim.lrr"), ("steps=many", "steps")])
def test_a_bad_set_key_is_blamed_on_the_command_line(tmp_path, capsys, item, key):
    assert main(["train", "tiny", "--out", str(tmp_path / "out"), "--set", item]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"'{key}' in --set {item}" in line
    assert "configs/train/tiny.yaml" not in line and "tiny.yaml" not in line.split(";")[0]


def test_a_bad_model_override_is_blamed_on_model_overrides():
    from bltkit.model import load_blt_config

    with pytest.raises(cfgio.ConfigError, match=r"'hash\.vocabb' in model_overrides hash\.vocabb=3"):
        load_blt_config("tiny", ["hash.vocabb=3"])


@pytest.mark.parametrize("name,value", [("eps", "0"), ("lr", "0"), ("weight_decay", "-1"), ("clip", "-0.5"),
                                        ("lr", ".inf")])
def test_an_optimiser_value_out_of_range_is_named(tmp_path, capsys, name, value):
    assert main(["train", "tiny", "--out", str(tmp_path / "out"), "--set", f"optim.{name}={value}"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"optim.{name} must be a finite number" in line and f"--set optim.{name}={value}" in line


def test_lr_that_overflows_adamw_stops_like_a_nan_loss(tmp_path, capsys):
    from bltkit.training.loop import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"overflowed at step 1 \(lr 1e\+38"):
        train(_cfg(tmp_path, steps=3, optim={"lr": 1e38}, schedule={"kind": "constant", "warmup": 0}), tmp_path / "a")
    p = tmp_path / "run.yaml"
    cfgio.write_yaml(_cfg(tmp_path, steps=3, optim={"lr": 1e38}, schedule={"kind": "constant", "warmup": 0}), p)
    assert main(["train", str(p), "--out", str(tmp_path / "b")]) == 2
    assert "overflowed at step 1" in _one_error_line(capsys.readouterr().err)


def test_train_seed_out_of_range_is_named(tmp_path, capsys):
    assert main(["train", "tiny", "--out", str(tmp_path / "out"), "--set", f"seed={10**23}"]) == 2
    assert f"seed must be an integer from 0 to 2**63 - 1, got {10**23}" in _one_error_line(capsys.readouterr().err)


def test_train_entropy_refuses_another_kind(tmp_path, capsys):
    assert main(["train-entropy", "tiny", "--out", str(tmp_path / "out"), "--set", "kind=blt"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "kind 'entropy'" in line and "kind=blt" in line
    assert not (tmp_path / "out").exists()


def test_empty_eval_file_is_named(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"data\.eval \[.*empty\.txt'\] holds no documents"):
        train(_cfg(tmp_path, data={"eval": [str(tmp_path / "empty.txt")]}), tmp_path / "run")


# ---- 7. bytes are bytes, sampling values are checked ----------------------------------------------
def test_patch_keeps_raw_bytes_from_stdin_and_argv(monkeypatch, capsys):
    import io

    class Stdin:
        buffer = io.BytesIO(b"caf\xe9")

    monkeypatch.setattr(sys, "stdin", Stdin)
    assert main(["patch", "--scheme", "byte", "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["bytes"] == 4
    arg = os.fsdecode(b"caf\xe9")  # what Python puts in sys.argv for those bytes
    assert main(["patch", "--scheme", "byte", "--json", arg]) == 0
    assert json.loads(capsys.readouterr().out) == {"bytes": 4, "patch_lengths": [1, 1, 1, 1], "entropies": None}
    assert main(["patch", "--scheme", "static", "--patch-size", "2", "--json", "é!"]) == 0  # UTF-8 text: 3 bytes
    assert json.loads(capsys.readouterr().out)["bytes"] == 3


@pytest.fixture
def tiny_bundle(tmp_path):
    from bltkit.bundle import save_bundle
    from bltkit.model import ByteLatentTransformer, load_blt_config

    torch.manual_seed(0)
    model = ByteLatentTransformer(load_blt_config("tiny", ["global_model.n_layers=1", "decoder.n_layers=1"]))
    save_bundle(tmp_path / "bundle", model, "blt", patcher={"scheme": "static", "patch_size": 4})
    return tmp_path / "bundle"


@pytest.mark.parametrize("flags,expected", [(["--temperature", "inf"], "temperature must be a finite number"),
                                            (["--temperature", "nan"], "temperature must be a finite number"),
                                            (["--seed", str(10**23)], f"seed must be an integer from"),
                                            (["--seed", str(-(2**63) - 1)], "seed must be an integer from")])
def test_generate_rejects_infinite_temperature_and_huge_seeds(tiny_bundle, capsys, flags, expected):
    assert main(["generate", "--model", str(tiny_bundle), "--max-new-bytes", "2", *flags, "hi"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert expected in line and flags[1] in line.replace("-9223372036854775809", str(-(2**63) - 1))
    assert main(["generate", "--model", str(tiny_bundle), "--max-new-bytes", "2", "--seed", str(2**64 - 1),
                 "--temperature", "1", "hi"]) == 0  # the largest seed torch takes is fine


# ---- 8. a bad .pth: bltkit never repeats torch's advice ------------------------------------------
def test_bad_pth_message_never_suggests_weights_only_false(tmp_path, capsys):
    from bltkit.model import ByteLatentTransformer, load_blt_config

    from test_convert import NotATensor, write_reference

    torch.manual_seed(0)
    src = write_reference(tmp_path / "ref", ByteLatentTransformer(load_blt_config("tiny")))
    for content in ({"model": {"x": NotATensor()}}, None):
        if content is None:
            (src / "consolidated.pth").write_bytes(b"definitely not a checkpoint")
        else:
            torch.save(content, src / "consolidated.pth")
        assert main(["convert", "--from", "reference", str(src), str(tmp_path / "b")]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "consolidated.pth is not a plain PyTorch state dict" in line
        assert "weights_only=False" not in line.replace(" ", "") and "False" not in line
        assert "safe_globals" not in line and "trust" not in line


# ---- 6 / 7. weights: integer where a float belongs, NaN / inf -------------------------------------
@pytest.mark.parametrize("poison", ["nan", "inf", "int"])
def test_load_refuses_bad_weights_naming_the_tensor(tiny_bundle, capsys, poison):
    from safetensors.torch import load_file, save_file

    import bltkit

    f = tiny_bundle / "model" / "model.safetensors"
    state = load_file(str(f))
    name = "local_decoder.output.weight"
    t = state[name]
    if poison == "int":
        state[name] = torch.ones(t.shape, dtype=torch.int64)
    else:
        t.view(-1)[3] = float(poison)
    save_file(state, str(f))
    expected = "is torch.int64" if poison == "int" else "holds 1 NaN or infinite value"
    with pytest.raises(ValueError, match=rf"model\.safetensors: tensor {name} {expected}"):
        bltkit.load(tiny_bundle, device="cpu")
    assert main(["score", "--model", str(tiny_bundle), "some text"]) == 2
    assert f"tensor {name} {expected}" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("poison", ["nan", "int"])
def test_convert_refuses_bad_weights_naming_the_source_tensor(tmp_path, capsys, poison):
    from bltkit.model import ByteLatentTransformer, load_blt_config

    from test_convert import reference_state, write_reference

    torch.manual_seed(0)
    model = ByteLatentTransformer(load_blt_config("tiny"))
    state = reference_state(model)
    name = "local_decoder.output.weight"  # the reference's name for the byte head
    assert name in state
    state[name] = (torch.ones(state[name].shape, dtype=torch.int32) if poison == "int"
                   else state[name].clone().fill_(float("nan")))
    src = write_reference(tmp_path / "ref", model, state=state)
    assert main(["convert", "--from", "reference", str(src), str(tmp_path / "b")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"tensor {name} " in line and ("torch.int32" in line if poison == "int" else "NaN" in line)
    assert not (tmp_path / "b").exists()
