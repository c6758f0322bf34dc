"""Training checkpoints: written to a temporary directory, renamed into place, the last K kept.

    OUT/checkpoints/step_000050/
      config.yaml              the resolved run config
      model/config.yaml        the model config   } loadable by the kind's ``from_pretrained``
      model/model.safetensors  full (unsharded) fp32 weights
      optimizer.safetensors    AdamW moments and step counts, keyed ``state/<param name>/<name>``
      rng_rank<R>.safetensors  each rank's torch RNG states
      loader.safetensors       tensors inside the data loader's state (rows packed but not yet served)
      trainer.json             step, counters, loader state, param groups; written last

A directory named ``step_*`` exists only after the rename, so it is complete: a kill mid-write
leaves at most a ``.tmp-step_*`` directory, which is ignored and cleared on the next write; a full
disk removes it and stops the run with one line (``CheckpointWriteError``); either way the previous
checkpoint stays loadable, and ``--resume`` passes over a damaged newest one to the newest intact.
Nothing is pickled: tensors go to safetensors, everything else to JSON / YAML. The directory must be on a filesystem every rank sees.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .. import config as cfgio
from ..weights import CONFIG_FILE, WEIGHTS_FILE

CHECKPOINTS = "checkpoints"
TRAINER_FILE = "trainer.json"
OPTIM_FILE = "optimizer.safetensors"
MODEL_SUBDIR = "model"

class CheckpointWriteError(ValueError):
    """A checkpoint could not be written (disk full...); the message names the directory."""


# Test hook: called with a stage name between writes ("model", "optimizer", "trainer").
_fault_hook: Optional[Callable[[str], None]] = None


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    found = []
    if root.is_dir():
        for d in root.iterdir():
            if d.is_dir() and d.name.startswith("step_") and (d / TRAINER_FILE).is_file():
                try:
                    found.append((int(d.name[5:]), d))
                except ValueError:
                    continue
    return sorted(found)


def latest_checkpoint(out_dir: str | os.PathLike) -> Optional[Path]:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


# ---- RNG -----------------------------------------------------------------------------------------
def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, plain data) capturing torch CPU/CUDA, Python and NumPy RNGs of this process."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    plain = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, plain


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    if "python" in plain:
        v, st, g = plain["python"]
        random.setstate((v, tuple(st), g))
    if "numpy" in plain:
        name, keys, pos, has_gauss, gauss = plain["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


# ---- optimizer state <-> safetensors + JSON ---------------------------------------------------
def flatten_optimizer_state(osd: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A full (parameter-name keyed) optimizer state dict as tensors + JSON-able param groups."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pname, st in osd["state"].items():
        for key, val in st.items():
            name = f"state/{pname}/{key}"
            if isinstance(val, torch.Tensor):
                tensors[name] = val.detach().cpu().contiguous().clone()
            else:
                scalars[name] = val
    groups = []
    for g in osd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict:
    state: dict[str, dict[str, Any]] = {}
    items = list(tensors.items()) + list(plain.get("scalars", {}).items())
    for name, val in items:
        _, rest = name.split("/", 1)
        pname, key = rest.rsplit("/", 1)
        state.setdefault(pname, {})[key] = val
    groups = []
    for g in plain["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ---- nested state with tensors <-> JSON skeleton + safetensors -------------------------------
def split_tensors(obj: Any, tensors: Optional[dict[str, torch.Tensor]] = None, path: str = "s"):
    """(JSON-able skeleton, {key: tensor}): each tensor replaced by ``{"__tensor__": key}``."""
    tensors = {} if tensors is None else tensors
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": path}, tensors
    if isinstance(obj, dict):
        return {k: split_tensors(v, tensors, f"{path}.{k}")[0] for k, v in obj.items()}, tensors
    if isinstance(obj, (list, tuple)):
        return [split_tensors(v, tensors, f"{path}.{i}")[0] for i, v in enumerate(obj)], tensors
    return obj, tensors


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


# ---- write / read ---------------------------------------------------------------------------------
def _hook(stage: str) -> None:
    if _fault_hook is not None:
        _fault_hook(stage)


def _noop() -> None:
    return None


def write_checkpoint(
    out_dir: str | os.PathLike,
    step: int,
    *,
    run_config: dict,
    model_config: dict,
    model_state: Optional[dict[str, torch.Tensor]],
    optim_state: Optional[dict],
    trainer_state: dict,
    keep: int,
    rank: int = 0,
    barrier: Callable[[], None] = _noop,
) -> Path:
    """Write checkpoint ``step`` atomically (rank 0 writes the shared files; every rank its RNG).

    A failed write (a full disk, ``OSError``) removes the half-written ``.tmp-step_*`` directory
    and raises ``CheckpointWriteError`` naming the directory and the error; the previous
    checkpoints are untouched."""
    root = Path(out_dir) / CHECKPOINTS
    tmp = root / f".tmp-{step_name(step)}"
    try:
        return _write_checkpoint(root, tmp, step, run_config=run_config, model_config=model_config,
                                 model_state=model_state, optim_state=optim_state, trainer_state=trainer_state,
                                 keep=keep, rank=rank, barrier=barrier)
    except OSError as e:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        prev = latest_checkpoint(out_dir)
        kept = f"the last checkpoint, {prev}, is intact" if prev is not None else "there is no earlier checkpoint"
        raise CheckpointWriteError(f"cannot write checkpoint {step_name(step)} in {root}: "
                                   f"{e.strerror or e}; {kept}") from None


def _write_checkpoint(root: Path, tmp: Path, step: int, *, run_config: dict, model_config: dict,
                      model_state: Optional[dict[str, torch.Tensor]], optim_state: Optional[dict],
                      trainer_state: dict, keep: int, rank: int, barrier: Callable[[], None]) -> Path:
    final = root / step_name(step)
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    rng_t, rng_p = rng_state()
    save_file(rng_t, str(tmp / f"rng_rank{rank}.safetensors"))
    (tmp / f"rng_rank{rank}.json").write_text(json.dumps(rng_p))
    barrier()
    if rank == 0:
        cfgio.write_yaml(run_config, tmp / "config.yaml")
        (tmp / MODEL_SUBDIR).mkdir()
        cfgio.write_yaml(model_config, tmp / MODEL_SUBDIR / CONFIG_FILE)
        _hook("model")
        assert model_state is not None and optim_state is not None
        save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()},
                  str(tmp / MODEL_SUBDIR / WEIGHTS_FILE))
        _hook("optimizer")
        opt_t, opt_p = flatten_optimizer_state(optim_state)
        save_file(opt_t, str(tmp / OPTIM_FILE))
        _hook("trainer")
        loader_skeleton, loader_tensors = split_tensors(trainer_state.get("loader"))
        save_file(loader_tensors, str(tmp / "loader.safetensors"))
        state = dict(trainer_state, step=step, optimizer=opt_p, loader=loader_skeleton)
        with open(tmp / TRAINER_FILE, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # a rerun of the same step replaces it
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in list_checkpoints(root.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def _read_tensors(f: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError

    try:
        return load_file(str(f))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"checkpoint file {f} is unreadable ({e})") from None


def _read_json(f: Path) -> Any:
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError) as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"checkpoint file {f} is unreadable ({e})") from None


def read_checkpoint(path: str | os.PathLike, rank: int = 0) -> dict[str, Any]:
    """Everything a resume needs from checkpoint directory ``path``. A missing file raises
    ``FileNotFoundError`` and a damaged one (truncated, not safetensors / JSON) ``ValueError``,
    each naming the file."""
    d = Path(path)
    trainer_file = d / TRAINER_FILE
    if not trainer_file.is_file():
        raise FileNotFoundError(f"{d} is not a complete checkpoint: {trainer_file} is missing")
    trainer = _read_json(trainer_file)
    model_file = d / MODEL_SUBDIR / WEIGHTS_FILE
    optim_file = d / OPTIM_FILE
    for f in (model_file, optim_file):
        if not f.is_file():
            raise FileNotFoundError(f"checkpoint file missing: {f}")
    model_state = _read_tensors(model_file)
    optim_state = unflatten_optimizer_state(_read_tensors(optim_file), trainer.pop("optimizer"))
    loader_file = d / "loader.safetensors"
    trainer["loader"] = join_tensors(trainer.get("loader"), _read_tensors(loader_file) if loader_file.is_file() else {})
    rng_file = d / f"rng_rank{rank}.safetensors"
    if not rng_file.is_file():  # resumed on more ranks than saved: fall back to rank 0's stream
        rng_file = d / "rng_rank0.safetensors"
    rng_plain = _read_json(rng_file.with_suffix(".json"))
    return {"trainer": trainer, "model_state": model_state, "optim_state": optim_state,
            "rng": (_read_tensors(rng_file), rng_plain), "config": cfgio.read_yaml(d / "config.yaml")}
