"""``bltkit.runtime``: one device and precision rule for train, bench, demo and ``bltkit.load``;
a device the machine lacks is one clear line (exit 2, no traceback) from every command."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bltkit.cli import main as cli
from bltkit.model import ByteLatentTransformer, load_blt_config
from bltkit.runtime import autocast, autocast_dtype, resolve_device, resolve_dtype

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_cuda(monkeypatch):
    """A machine without CUDA, whatever this one has (the CUDA case is the one to prove here)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from bltkit.bundle import save_bundle

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("bundle")
    save_bundle(d, ByteLatentTransformer(load_blt_config("tiny")), kind="blt", patcher={"scheme": "space"})
    return d


# ---- the rule ------------------------------------------------------------------------------------
def test_auto_is_cuda_when_present_and_cpu_otherwise(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("auto", local_rank=1) == torch.device("cuda:1")  # torchrun: a GPU a process
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda:1")
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda:0")  # an explicit index wins
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"--device 'cuda:2': this machine has 2 CUDA devices \(cuda:0..cuda:1\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["tpu", "CUDA", "cuda:x", "gpu", "", "meta"])
def test_unknown_devices_are_one_line_naming_them(name):
    with pytest.raises(ValueError) as e:
        resolve_device(name)
    msg = str(e.value)
    assert f"--device {name!r}" in msg and "auto, cpu, cuda, cuda:N, mps" in msg and "\n" not in msg


def test_missing_accelerators_are_named(no_cuda, monkeypatch):
    with pytest.raises(ValueError, match=r"--device 'cuda:1': CUDA is not available on this machine"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device 'mps': MPS \(Apple GPU\) is not available"):
        resolve_device("mps", what="device")


def test_precision_auto_is_bf16_on_cuda_and_fp32_elsewhere():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    assert resolve_dtype("auto", cpu) == torch.float32 and resolve_dtype(None, cuda) == torch.bfloat16
    assert resolve_dtype("bf16", cpu) == torch.bfloat16 and resolve_dtype("float16", cuda) == torch.float16
    assert resolve_dtype(torch.float32, cuda) == torch.float32
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("auto", cuda) == torch.bfloat16
    assert autocast_dtype("fp32", cuda) is None and autocast_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match=r"dtype 'fp8' is not a precision"):
        resolve_dtype("fp8", cpu, what="dtype")
    with pytest.raises(ValueError, match="torch.int64"):
        resolve_dtype(torch.int64, cpu)


def test_autocast_runs_matmuls_in_the_resolved_dtype():
    cpu = torch.device("cpu")
    a = torch.randn(4, 4)
    with autocast(cpu, autocast_dtype("bf16", cpu)):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(cpu, autocast_dtype("auto", cpu)):
        assert (a @ a).dtype == torch.float32


# ---- every command: exit 2, one line naming the device, nothing written ---------------------------
def _commands(bundle: Path, out: Path) -> dict[str, list[str]]:
    return {
        "generate": ["generate", "--model", str(bundle), "--max-new-bytes", "2", "hi"],
        "score": ["score", "--model", str(bundle), "hi"],
        "bench": ["bench", "--config", "tiny", "--only", "train", "--no-hf"],
        "train": ["train", "tiny", "--out", str(out)],
    }


@pytest.mark.parametrize("command", ["generate", "score", "bench", "train"])
@pytest.mark.parametrize("device, needle", [("tpu", "'tpu' is not a device bltkit runs on"),
                                            ("cuda", "'cuda': CUDA is not available on this machine")])
def test_a_device_the_machine_lacks_is_one_line(no_cuda, capsys, bundle, tmp_path, command, device, needle):
    out = tmp_path / "run"
    rc = cli(_commands(bundle, out)[command] + ["--device", device])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 2, err
    assert err.startswith(f"bltkit {command}: error: ") and needle in err, err
    assert "\n" not in err and "Traceback" not in captured.err + captured.out
    assert not out.exists()  # train leaves no run directory behind


def test_the_installed_command_exits_2_without_a_traceback(bundle):
    """The same through a real process (``python -m bltkit.cli``), as a user's shell sees it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "bltkit.cli", "generate", "--model", str(bundle), "--device", "tpu",
                        "hi"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip() == ("bltkit generate: error: --device 'tpu' is not a device bltkit runs on; "
                                "choose auto, cpu, cuda, cuda:N, mps")
