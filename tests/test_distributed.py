"""Data parallelism on CPU: two gloo processes (DDP, then FSDP2 ``fully_shard`` per block) follow
the same loss curve as one process at the same global batch.

Tolerance 1e-5 nats: the two ranks' gradients are averaged by an all-reduce (and FSDP2 reduce-
scatters them), which sums the same numbers in a different order than one process's backward
over all rows; the difference is float rounding (~1e-7 a step), a wrong split or normaliser
would move the losses by >1e-2.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from bltkit.bundle import read_bundle
from bltkit.training import checkpoint as ckpt
from bltkit.training.config import train_config_from_dict
from bltkit.training.loop import train

TEXT = ("Bytes in, patches inside, bytes out: a byte latent transformer needs no tokenizer. " * 40)


def _cfg(tmp: Path, parallel: str) -> dict:
    (tmp / "train.txt").write_text(TEXT)
    (tmp / "eval.txt").write_text(TEXT[:400])
    return {
        "kind": "blt", "model": "tiny", "model_overrides": ["hash.vocab=257", "global_model.n_layers=1", "decoder.n_layers=1"],
        "patcher": {"scheme": "static", "patch_size": 3},
        "data": {"train": [str(tmp / "train.txt")], "eval": [str(tmp / "eval.txt")], "seq_len": 32,
                 "batch_size": 4, "eval_rows": 2},
        "optim": {"lr": 3e-3}, "steps": 3, "eval_every": 0, "checkpoint_every": 0, "progress": False,
        "parallel": parallel,
    }


def _worker(rank: int, world: int, port: int, cfg: dict, out: str, result_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    res = train(train_config_from_dict(cfg), out)
    if rank == 0:
        Path(result_file).write_text(json.dumps(res.losses))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, parallel):
    cfg = _cfg(tmp_path, parallel)
    result = tmp_path / "losses.json"
    mp.start_processes(_worker, args=(2, _free_port(), cfg, str(tmp_path / "multi"), str(result)), nprocs=2,
                       join=True, start_method="spawn")
    multi = json.loads(result.read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (a shared 2-core runner: contention, not results)
    try:
        single = train(train_config_from_dict(dict(cfg, parallel="none")), tmp_path / "single").losses
    finally:
        torch.set_num_threads(threads)
    assert len(multi) == 3
    assert multi == pytest.approx(single, abs=1e-5)
    # Rank 0 wrote one full checkpoint (every rank's RNG beside it) and the bundle.
    (step, path), = ckpt.list_checkpoints(tmp_path / "multi")
    assert step == 3 and {p.name for p in path.glob("rng_rank*.safetensors")} == {"rng_rank0.safetensors", "rng_rank1.safetensors"}
    assert read_bundle(tmp_path / "multi").kind == "blt"
    single_state = ckpt.read_checkpoint(ckpt.latest_checkpoint(tmp_path / "single"))["model_state"]
    multi_state = ckpt.read_checkpoint(path)["model_state"]
    assert set(single_state) == set(multi_state)
    for k in single_state:
        torch.testing.assert_close(multi_state[k], single_state[k], atol=1e-4, rtol=1e-3)
