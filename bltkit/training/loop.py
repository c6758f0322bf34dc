"""The training loop: one loop for every model kind (the kind's ``Task`` supplies the differences).

Per optimiser step (docs/reference-semantics.md §13):
  1. this rank's rows of the global batch, split into ``grad_accum`` micro-batches;
  2. each micro-batch: ``loss = sum nats / n targets of the whole global step`` (times the world
     size, which DDP / FSDP average away), backward; so any split over ranks and micro-batches
     gives the gradient of the same global mean;
  3. a non-finite loss stops the run naming the step, before the update (the last checkpoint
     stays as it was), and so does an update that overflows (a learning rate near 1e38);
  4. clip the global gradient norm, set the LR from the schedule, AdamW step.
Logged every ``log_every`` steps: loss, lr, bytes, mean patch length, cumulative training FLOPs,
bytes/s, and the kind's own figures (``Task.step_metrics``: the H-Net's ratio loss and
compression); every ``eval_every`` steps (and before the first and after the last): held-out bits per
byte. Checkpoints every ``checkpoint_every`` steps and at the end (checkpoint.py); ``resume``
continues from the newest complete one and reproduces the uninterrupted run's losses (a config
that differs from the checkpoint's is used, with a warning on stderr naming the changed keys). The
finished ``out_dir`` is a bundle (``bltkit.bundle``).

Precision: fp32 master weights; bf16 autocast on CUDA (``precision: auto``), fp32 on CPU.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .. import config as cfgio
from ..runtime import autocast, autocast_dtype
from . import checkpoint as ckpt
from ..patching.lengths import trim_zero_columns
from .config import TrainConfig
from .distributed import DistEnv, all_reduce_sum, barrier, grad_sync, init_distributed, resolve_mode, shutdown, wrap_model
from .metrics import MetricsWriter
from .optim import build_optimizer
from .schedule import lr_factor, set_lr
from .task import Task, build_task, iter_to_device

LN2 = math.log(2.0)


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the message names the step."""


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)  # per step, this session (resumed runs: from the resume step)
    bpb: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out bits per byte)
    flops: int = 0
    resumed_from: Optional[int] = None


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device,
             amp: Optional[torch.dtype]) -> float:
    """Held-out bits per byte: sum nats / (ln 2 * real target bytes) (docs/measurement.md §1)."""
    was_training = model.training
    model.eval()
    nats = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for b in batches:
        with autocast(device, amp):
            s, n = task.eval_loss(model, iter_to_device(b, device))
        nats += s.double()
        count += n.double()
    model.train(was_training)
    return float(nats / (LN2 * count.clamp(min=1)))


def split_micro(batch: dict[str, torch.Tensor], n: int) -> list[dict[str, torch.Tensor]]:
    """Split a batch's rows into ``n`` micro-batches (gradient accumulation)."""
    b = batch["ids"].shape[0]
    if b % n:
        raise ValueError(f"rows a rank a step ({b}) are not divisible by grad_accum {n}")
    m = b // n
    out = []
    for i in range(n):
        mb = {k: v[i * m:(i + 1) * m] for k, v in batch.items()}
        if "patch_lengths" in mb:
            mb["patch_lengths"] = trim_zero_columns(mb["patch_lengths"])
        out.append(mb)
    return out


def _full_state(model: nn.Module, optimizer, env: DistEnv, mode: str) -> tuple[dict, dict]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def _load_state(model: nn.Module, optimizer, model_state: dict, optim_state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=opts)
    set_optimizer_state_dict(model, optimizer, optim_state, options=opts)


# What a run writes into its directory: an existing one of these means the directory holds a run
# (or a bundle), which a fresh run must not silently replace.
RUN_OUTPUTS = ("bundle.yaml", "model", "entropy_model", ckpt.CHECKPOINTS, "metrics.jsonl", "config.yaml", "tensorboard")


def _run_outputs(out: Path) -> list[str]:
    return [name for name in RUN_OUTPUTS if (out / name).exists()]


def _prepare_out(out: Path, cfg: TrainConfig, resume: bool, force: bool, env: DistEnv) -> Optional[tuple[Path, dict]]:
    """Check what ``out`` already holds against ``resume`` / ``force``; the checkpoint to resume
    from and its state (``None``: start at step 0).

    Without ``resume`` a directory holding a run's outputs is refused unless ``force``, which
    deletes those outputs (and nothing else) first. With ``resume`` the newest checkpoint that
    reads back is used: an unreadable newer one is named on stderr and passed over; with no
    checkpoint at all a directory holding a finished bundle is refused, an empty one starts at
    step 0 (saying so); a checkpoint past ``cfg.steps`` is refused.
    """
    import shutil
    import sys

    if resume and force:
        raise ValueError("--resume continues a run and --force starts it afresh: give one of them")
    found = _run_outputs(out) if out.is_dir() else []
    if not resume:
        if found and not force:
            latest = ckpt.latest_checkpoint(out)
            what = f"checkpoints (newest {latest.name})" if latest is not None else ", ".join(found)
            raise ValueError(f"{out} already holds a run ({what}); pass --resume to continue it, --force to "
                             f"replace it, or choose another --out")
        if found and env.is_main:
            for name in found:
                p = out / name
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        barrier(env)
        return None
    bad: list[str] = []
    for step, d in reversed(ckpt.list_checkpoints(out)):
        try:
            state = ckpt.read_checkpoint(d, env.rank)
        except (ValueError, OSError) as e:
            bad.append(str(e))
            if env.is_main:
                print(f"warning: --resume: skipping checkpoint {d.name}: {e}", file=sys.stderr, flush=True)
            continue
        if step > cfg.steps:
            raise ValueError(f"--resume: {d} is at step {step}, past steps={cfg.steps}; give steps >= {step} "
                             f"(or --force to start afresh)")
        if bad and env.is_main:
            print(f"--resume: continuing from the newest intact checkpoint, {d.name}", file=sys.stderr, flush=True)
        return d, state
    if bad:
        raise ValueError(f"--resume: no checkpoint in {out / ckpt.CHECKPOINTS} reads back ({'; '.join(bad)})")
    bundle = [n for n in ("bundle.yaml", "model") if n in found]
    if bundle:
        raise ValueError(f"--resume: {out} holds a bundle ({', '.join(bundle)}) but no checkpoint to continue "
                         f"from; pass --force to train it afresh, or choose another --out")
    if env.is_main:
        print(f"--resume: no checkpoint in {out} yet; starting at step 0", file=sys.stderr, flush=True)
    return None


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: d}
    return {prefix[:-1]: d}


def config_changes(saved: dict, now: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, checkpoint value, current value) of every setting that differs; a key missing
    on one side reads as ``<unset>``."""
    a, b = _flat(saved), _flat(now)
    unset = "<unset>"
    return [(k, a.get(k, unset), b.get(k, unset)) for k in sorted(set(a) | set(b)) if a.get(k, unset) != b.get(k, unset)]


def warn_config_changes(saved: dict, now: dict, checkpoint: Path) -> list[tuple[str, Any, Any]]:
    """Tell stderr which settings a resume changes: the run goes on with the new ones, which is
    right for ``steps`` and rarely for the model or the data."""
    import sys

    changes = config_changes(saved, now)
    if changes:
        lines = "\n".join(f"  {k}: {old!r} -> {new!r}" for k, old, new in changes)
        msg = (f"--resume with a config that differs from the checkpoint's ({checkpoint / 'config.yaml'}) in "
               f"{len(changes)} key(s); continuing with the new values:\n{lines}")
        print(f"warning: {msg}", file=sys.stderr, flush=True)
    return changes


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False, config_dir: Optional[Path] = None,
          stop_after: Optional[int] = None, force: bool = False) -> TrainResult:
    """Run ``cfg`` into ``out_dir``. ``stop_after`` ends the session after that step (as a kill
    would, but after the step's checkpoint if one is due): for tests and time-sliced jobs.
    ``out_dir`` is locked for the run (``bltkit.rundir``): a second run there fails at once.
    ``force`` replaces a finished or abandoned run in ``out_dir`` (see ``_prepare_out``)."""
    from contextlib import nullcontext

    from ..rundir import check_out_dir, locked

    out = check_out_dir(out_dir)
    env = init_distributed(cfg.device)
    threads = torch.get_num_threads()
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        # Rank 0 alone holds the lock: the other ranks of the same job share the directory.
        with locked(out) if env.is_main else nullcontext(out):
            return _train(cfg, out, resume, force, config_dir, stop_after, env)
    finally:
        torch.set_num_threads(threads)
        shutdown(env)


def _train(cfg: TrainConfig, out: Path, resume: bool, force: bool, config_dir: Optional[Path],
           stop_after: Optional[int], env: DistEnv) -> TrainResult:
    from tqdm import tqdm

    device = env.device
    amp = autocast_dtype(cfg.precision, device)
    resumed = _prepare_out(out, cfg, resume, force, env)
    task = build_task(cfg, config_dir)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = task.build_model().to(device)
    if cfg.compile:
        for unit in task.shard_units(model):
            unit.compile()
    mode = resolve_mode(cfg.parallel, env)
    wrapped = wrap_model(model, task.shard_units(model), mode, env, param_dtype=amp if mode == "fsdp" else None)
    optimizer = build_optimizer(wrapped, cfg.optim)
    loader = task.train_batches(env.rank, env.world_size)
    held_out = task.eval_batches()

    run_config = cfgio.to_dict(cfg)
    start, flops_total, bytes_total, extra_total = 0, 0, 0, {}
    result = TrainResult(out, cfg.steps)
    latest = None
    if resumed is not None:
        latest, state = resumed
        if env.is_main:
            warn_config_changes(state["config"], run_config, latest)
        _load_state(wrapped, optimizer, state["model_state"], state["optim_state"])
        tr = state["trainer"]
        start, flops_total, bytes_total = tr["step"], tr["flops"], tr["bytes"]
        extra_total = tr.get("extra_flops", {})
        loader.load_state_dict(tr["loader"])
        ckpt.set_rng_state(*state["rng"])
        result.resumed_from = start
    else:
        torch.manual_seed(cfg.seed + env.rank)
    if env.is_main:
        cfgio.write_yaml(run_config, out / "config.yaml")
    metrics = MetricsWriter(out, enabled=env.is_main, tensorboard=cfg.tensorboard,
                            resume_step=start if latest is not None else None)

    def save(step: int) -> None:
        model_state, optim_state = _full_state(wrapped, optimizer, env, mode)
        trainer = {"flops": flops_total, "bytes": bytes_total, "extra_flops": extra_total,
                   "loader": loader.state_dict(), "world_size": env.world_size}
        ckpt.write_checkpoint(out, step, run_config=run_config, model_config=task.model_config_dict(),
                              model_state=model_state if env.is_main else None,
                              optim_state=optim_state if env.is_main else None,
                              trainer_state=trainer, keep=cfg.keep_checkpoints, rank=env.rank,
                              barrier=lambda: barrier(env))

    if start == 0:
        bpb0 = evaluate(task, wrapped, held_out, device, amp)
        result.bpb.append((0, bpb0))
        metrics.log({"step": 0, "loss": None, "lr": 0.0, "bytes": 0, "flops": 0, "bpb": bpb0})

    bar = tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and env.is_main), desc=f"train {cfg.kind}",
               unit="step", dynamic_ncols=True)
    wrapped.train()
    t_last, bytes_last = time.perf_counter(), bytes_total
    step = start
    try:
        for step in range(start + 1, cfg.steps + 1):
            batch = next(loader)
            micro = split_micro(batch, cfg.grad_accum)
            # Targets of the whole global step: the normaliser every micro-batch's loss shares.
            local = torch.tensor([float(batch["mask"].sum())], dtype=torch.float64)
            n_global = float(all_reduce_sum(local.to(device), env).item())
            if n_global <= 0:
                raise ValueError(f"step {step}: the batch holds no real target bytes")
            nats_step = torch.zeros((), dtype=torch.float64, device=device)
            for i, mb in enumerate(micro):
                with grad_sync(wrapped, mode, sync=i == len(micro) - 1):
                    with autocast(device, amp):
                        parts = task.loss(wrapped, iter_to_device(mb, device))
                    nats = parts[0]
                    objective = nats + parts[2] if len(parts) > 2 else nats  # a kind's penalty (Task.loss)
                    (objective * (env.world_size / n_global)).backward()
                nats_step += nats.detach().double()

            aux = task.step_stats()
            stats = torch.tensor([float(nats_step), float(task.flops_per_batch(batch)),
                                  float(task.n_patches(batch))], dtype=torch.float64, device=device)
            extra = task.extra_flops_per_batch(batch)
            extra_t = torch.tensor([float(v) for v in extra.values()], dtype=torch.float64, device=device)
            aux_t = torch.tensor([float(aux[k]) for k in sorted(aux)], dtype=torch.float64, device=device)
            all_reduce_sum(stats, env)
            if extra:
                all_reduce_sum(extra_t, env)
            if aux:
                all_reduce_sum(aux_t, env)
            loss = float(stats[0]) / n_global
            if not math.isfinite(loss):
                raise TrainingDiverged(f"loss is {loss} at step {step}; stopping before the update "
                                       f"(the last checkpoint is intact)")
            gnorm = None
            if cfg.optim.clip > 0:
                gn = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.optim.clip)
                gnorm = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)  # DTensor under FSDP
                if not math.isfinite(gnorm):
                    raise TrainingDiverged(f"gradient norm is {gnorm} at step {step} (loss {loss}); stopping "
                                           f"before the update (the last checkpoint is intact)")
            lr = set_lr(optimizer, cfg.optim.lr, lr_factor(step - 1, cfg.steps, cfg.schedule))
            try:
                optimizer.step()
            except RuntimeError as e:  # AdamW's lr / bias correction past float range (lr ~1e38)
                if "overflow" not in str(e):
                    raise
                raise TrainingDiverged(f"the AdamW update overflowed at step {step} (lr {lr:.3g}: {e}); stopping "
                                       f"(the last checkpoint is intact)") from None
            optimizer.zero_grad(set_to_none=True)

            flops_total += int(stats[1])
            bytes_total += int(n_global)
            for (k, _), v in zip(extra.items(), extra_t.tolist()):
                extra_total[k] = extra_total.get(k, 0) + int(v)
            result.losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")

            is_last = step == cfg.steps
            if step % cfg.log_every == 0 or is_last or (cfg.eval_every and step % cfg.eval_every == 0):
                now = time.perf_counter()
                rec: dict[str, Any] = {
                    "step": step, "loss": loss, "lr": lr, "bytes": bytes_total, "flops": flops_total,
                    "bytes_per_s": (bytes_total - bytes_last) / max(now - t_last, 1e-9),
                    "grad_norm": gnorm, "epoch": loader.epoch,
                }
                n_p = float(stats[2])
                if n_p > 0:
                    rec["mean_patch_length"] = n_global / n_p
                rec.update(extra_total)
                if aux:
                    rec.update(task.step_metrics(dict(zip(sorted(aux), aux_t.tolist()))))
                    if "warning" in rec and env.is_main:
                        tqdm.write(f"warning: step {step}: {rec['warning']}", file=sys.stderr)
                if (cfg.eval_every and step % cfg.eval_every == 0) or is_last:
                    bpb = evaluate(task, wrapped, held_out, device, amp)
                    rec["bpb"] = bpb
                    result.bpb.append((step, bpb))
                metrics.log(rec)
                t_last, bytes_last = time.perf_counter(), bytes_total
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or is_last:
                save(step)
            if stop_after is not None and step >= stop_after:
                break
    finally:
        bar.close()
        metrics.close()
    result.flops = flops_total
    if step == cfg.steps:
        export(task, model, wrapped, optimizer, env, mode, out)
    return result


def export(task: Task, model: nn.Module, wrapped: nn.Module, optimizer, env: DistEnv, mode: str, out: Path) -> None:
    """Write the finished run's bundle (``bundle.yaml`` + ``model/``) into ``out``."""
    if mode == "fsdp":
        state, _ = _full_state(wrapped, optimizer, env, mode)
        if env.is_main:
            task.save_bundle(task.model_from_state(state), out)
    elif env.is_main:
        task.save_bundle(model, out)
    barrier(env)
