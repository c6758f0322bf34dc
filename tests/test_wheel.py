"""bltkit as users install it: a wheel in a fresh virtual environment, run from outside the checkout.

The shipped configs and the built-in corpus are package data (``bltkit/configs``, ``bltkit/corpus``)
found through ``importlib.resources``; this test fails if the wheel does not carry them. The venv
sees the system site packages (so torch is not installed again), but its own copy of bltkit comes
first on its path, and the test checks that the code that ran is the wheel's.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wheel")]


def _run(cmd, cwd, env, timeout=600):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
         cwd=tmp_path, env=env)
    (wheel,) = wheels.glob("bltkit-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path, env=env)
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)], cwd=tmp_path, env=env)

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([str(py), "-c", "import bltkit, bltkit.config as c; print(bltkit.__file__); print(c.CONFIG_ROOT)"],
                 cwd=work, env=env).split()
    assert all(Path(p).resolve().is_relative_to(venv.resolve()) for p in where), where

    bltkit = str(venv / "bin" / "bltkit")
    out = _run([bltkit, "forward"], cwd=work, env=env)
    assert "bits per byte" in out or "bpb" in out, out

    run_dir = work / "run"
    _run([bltkit, "train", "tiny", "--out", str(run_dir), "--set", "steps=2", "--set", "progress=false",
          "--set", "checkpoint_every=0"], cwd=work, env=env)
    assert (run_dir / "model" / "model.safetensors").is_file() or any(run_dir.rglob("model.safetensors"))
    assert (run_dir / "config.yaml").is_file()
    lines = (run_dir / "metrics.jsonl").read_text().strip().splitlines()
    assert any('"step": 2' in ln for ln in lines), lines[-3:]
