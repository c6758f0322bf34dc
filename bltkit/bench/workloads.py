"""bltkit's side of the three figures: the training step, entropy patching and generation, each on
its fast path. Hugging Face's side is ``hf_peer``; the timing harness is ``measure``.

- **train**: forward + backward + fused AdamW on the anchor's fixed patches; bf16 autocast on CUDA
  with fp32 master weights, fp32 on CPU; FlexAttention block masks on CUDA (``attn_impl`` auto),
  ``validate=False`` (no host syncs in the step), patch columns padded to a bucket, per-block
  compile when asked (``compile_blocks``). FLOPs are analytic (``bltkit.training.flops``, the BLT
  paper's convention: training = 3 x forward); the record says so (``flops_source``).
- **patch**: bltkit's ``Patcher`` with the global entropy threshold (strict ``H_t > θ`` in nats
  starts byte t+1; bytes 0 and 1 always start) over B x N bytes, scoring with the entropy model
  of ``configs/entropy/<name>.yaml`` (``small`` is the anchor's patcher: 8 layers, 512 wide, 8
  heads, FFN 1536, window 512 with EOS resets). Random weights: speed does not depend on them,
  only the patch count does, and the train figure fixes that separately.
- **generate**: greedy new bytes a second after one warm-up call, with time to first byte;
  the cached path (``bltkit.inference.bench.generation_benchmark`` on a bundle of the same
  models) beside the uncached reference loop (at every step the entropy model re-patches the
  whole prefix with the next-byte patch and the BLT re-runs over it), as a ratio.
Axes: B rows, N (or T) bytes, P patches, V vocabulary.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..inference.stepper import TUNED
from ..model.config import BLTConfig
from ..nn.attention import CrossAttention
from ..nn.block import TransformerBlock
from ..runtime import autocast, scorer_precision
from .inputs import pad_patch_columns
from .measure import profile_calls, time_generation, time_train_steps


# ---- the fast path's opt-ins ---------------------------------------------------------------------
def compile_blocks(model: nn.Module, **compile_kwargs) -> int:
    """Compile every ``TransformerBlock`` and ``CrossAttention`` of ``model`` in place
    (``nn.Module.compile``, the torchtitan habit); returns how many were compiled.
    ``compile_kwargs`` go to ``torch.compile`` (e.g. ``backend``, ``mode``).

    Why per block: the stacks repeat one block, so Dynamo compiles one graph a block type and
    reuses it; the mask building, embedding and reshapes between blocks stay eager, so a change of
    patch count recompiles little (pad patch counts with ``pad_patch_columns``)."""
    n = 0
    for module in model.modules():
        if isinstance(module, (TransformerBlock, CrossAttention)):
            module.compile(**compile_kwargs)
            n += 1
    return n


def analytic_train_flops(cfg: BLTConfig, ids: torch.Tensor, patch_lengths: torch.Tensor) -> tuple[int, str]:
    """(training FLOPs of one step, source) from ``bltkit.training.flops``."""
    from ..training.flops import blt_forward_flops, training_flops

    return training_flops(sum(blt_forward_flops(cfg, ids, patch_lengths).values())), "analytic (bltkit.training.flops)"


# ---- the entropy model of the patching and generation figures -------------------------------------
def load_bench_entropy_model(name: str, device: torch.device, attn_impl: Optional[str] = None,
                             local_attention: Optional[str] = None) -> tuple[nn.Module, str]:
    """(``EntropyModel`` from config ``name`` on ``device``, eval and frozen; a description).
    ``attn_impl`` overrides the config's (the uncached generation loop uses ``sdpa``: its prefix
    grows a byte a step, and compiled FlexAttention would recompile at every length);
    ``local_attention`` too (``dense``: the T x T reference mask, the patch figure's baseline)."""
    from entropy_model.model import EntropyModel, load_entropy_config

    cfg = load_entropy_config(name)
    if attn_impl is not None:
        cfg = dataclasses.replace(cfg, attn_impl=attn_impl)
    if local_attention is not None:
        cfg = dataclasses.replace(cfg, local_attention=local_attention)
    with torch.device(device):
        model = EntropyModel(cfg)
    model.eval().requires_grad_(False)
    return model, (f"entropy_model.EntropyModel ({name}: {cfg.n_layers} layers, dim {cfg.dim}, window {cfg.window}, "
                   f"{cfg.local_attention} local attention)")


def entropy_patcher(model: nn.Module, threshold: float, precision: str = "auto"):
    """bltkit's ``Patcher`` with the global entropy threshold (nats), scoring with ``model`` at
    ``precision`` (``auto``: bf16 autocast on CUDA, fp32 elsewhere)."""
    from ..patching.patcher import Patcher

    return Patcher(scheme="entropy", threshold=threshold, scorer=model, precision=precision)


# ---- train ---------------------------------------------------------------------------------------
def bltkit_train_figure(model: nn.Module, cfg: BLTConfig, ids: torch.Tensor, patch_lengths: torch.Tensor,
                        *, device: torch.device, amp: Optional[torch.dtype], steps: int, warmup: int,
                        bucket: int, peak: Optional[float], profile_dir: Optional[str] = None) -> dict:
    """``ids`` (B, N + 1): inputs are the first N bytes, targets the last N; ``patch_lengths``
    (B, P) in bltkit's convention over the N inputs."""
    x, y = ids[:, :-1].to(device), ids[:, 1:].to(device)  # (B, N) each
    flops, source = analytic_train_flops(cfg, x, patch_lengths)
    model.check_inputs(x, patch_lengths.to(device))  # once, outside the timed steps
    pl = pad_patch_columns(patch_lengths, bucket).to(device)  # (B, P') zero columns: a no-op

    def loss_fn() -> torch.Tensor:
        logits = model(x, pl, validate=False)  # (B, N, V) fp32
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    rec = time_train_steps(model, loss_fn, flops, source, x.numel(), device, amp, steps, warmup, peak, "bltkit train",
                           profile_dir=profile_dir)
    rec.update(attn_impl=model.resolve_attn_impl(device), patch_columns=int(pl.shape[1]), bucket=bucket)
    return rec


# ---- patch ---------------------------------------------------------------------------------------
def bltkit_patch_step(entropy_model: nn.Module, ids: torch.Tensor, threshold: float, *, device: torch.device,
                      amp: Optional[torch.dtype]) -> tuple[Callable[[], object], Callable[[float, float, str], dict]]:
    """(step, record): ``step`` computes the entropies and boundaries of ``ids`` (B, N) through
    bltkit's ``Patcher``; ``record(seconds a step, peak GiB, what the peak measures)`` is the
    figure's record, from the last step's patches (the runner times the steps, ``time_in_turn``)."""
    x = ids.to(device)  # (B, N)
    patcher = entropy_patcher(entropy_model, threshold, scorer_precision(amp))
    out: dict[str, torch.Tensor] = {}

    def step() -> torch.Tensor:
        pl = patcher(x, include_next_token=True).patch_lengths  # (B, P), first 1, Σ = N + 1
        out["pl"] = pl
        return pl

    def record(dt: float, mem: float, kind: str) -> dict:
        pl = out["pl"]
        return dict(ms=dt * 1e3, bytes_per_s=x.numel() / dt, peak_mem_gib=mem, peak_mem_kind=kind,
                    mean_patch=x.shape[1] / float(((pl > 0).sum(dim=1) - 1).clamp(min=1).double().mean()),
                    precision=scorer_precision(amp), patcher_params_m=sum(p.numel() for p in entropy_model.parameters()) / 1e6)

    return step, record


# ---- generate ------------------------------------------------------------------------------------
def cached_generation_figure(model: nn.Module, entropy_model: nn.Module, threshold: float, batch: int,
                             prompt_len: int, new_bytes: int, device: torch.device,
                             paths=("eager", "speculative"), profile_dir: Optional[str] = None,
                             compile_backend: str = "inductor") -> dict:
    """bltkit's cached generation: the models written as a bundle (entropy patching at
    ``threshold``), loaded with ``bltkit.load`` and timed by
    ``bltkit.inference.bench.generation_benchmark(handle, batch, prompt_len, new_bytes, paths=paths)``.
    With ``profile_dir``, 32 warm one-byte decode steps of each non-speculative path are profiled
    into ``profile-decode-step-b{batch}[-compiled].{txt,json}`` there."""
    import tempfile

    from ..bundle import save_bundle
    from ..inference.api import load
    from ..inference.bench import SPECULATIVE_PATHS, generation_benchmark, path_compile

    with tempfile.TemporaryDirectory() as d:
        save_bundle(d, model, kind="blt", patcher={"scheme": "entropy", "threshold": threshold},
                    entropy_model=entropy_model)
        handle = load(d, device=device)
    rec = dict(generation_benchmark(handle, batch, prompt_len, new_bytes, paths=paths,
                                    compile_backend=compile_backend))
    # The same keys as the uncached and HF figures: seconds as "s", new bytes counted a row.
    rec.setdefault("s", rec.get("seconds"))
    rec.setdefault("batch", batch)
    rec["total_new_bytes"] = rec["new_bytes"]
    rec["new_bytes"] = rec["new_bytes"] // batch
    rec.setdefault("mode", "cached (bltkit.inference)")
    if profile_dir:
        for path in (p for p in paths if p not in SPECULATIVE_PATHS):
            profile_decode_step(handle, batch, prompt_len, device, profile_dir,
                                compiled=path_compile(path, compile_backend))
    return rec


def profile_decode_step(handle, batch: int, prompt_len: int, device: torch.device, directory: str,
                        compiled: bool | str = False, calls: int = 32) -> dict:
    """Profile ``calls`` one-byte steps of cached greedy decoding after the prompt (the prefill and
    a few warm steps stay out): what one generated byte costs, op by op."""
    from ..inference.bench import bench_prompts
    from ..inference.generate import decode_loop
    from ..inference.sampling import SamplingParams

    prompts = bench_prompts(batch, prompt_len)
    n = calls + 16
    stepper = handle._stepper(True, prompts, n, compile=compiled)
    it = decode_loop(stepper, prompts, n, SamplingParams(), [0] * batch, ignore_eos=True)  # every row n bytes
    with torch.no_grad():
        for _ in range(8 * batch):
            next(it)

        def one_byte() -> None:
            for _ in range(batch):  # decode_loop yields one (row, byte) at a time
                next(it)

        name = f"decode-step-b{batch}" + ("-tuned" if compiled == TUNED else "-compiled" if compiled else "")
        return profile_calls(one_byte, device, calls, directory, name)


@torch.no_grad()
def greedy_uncached(model: nn.Module, entropy_model: nn.Module, prompt: torch.Tensor, new_bytes: int,
                    threshold: float, device: torch.device, amp: Optional[torch.dtype],
                    on_byte: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """(B, T) prompt -> (B, T + new_bytes), greedy, through bltkit's one uncached reference loop
    (``bltkit.inference.recompute``: re-patch and re-run the full prefix every byte). SDPA
    throughout: the prefix grows a byte a step, and compiled FlexAttention (``dynamic=False``)
    would recompile at every new length."""
    from ..inference.recompute import RecomputeStepper
    from ..patching.config import PatcherConfig

    stepper = RecomputeStepper(model, PatcherConfig(scheme="entropy", threshold=threshold), entropy_model, device,
                               amp=amp, attn_impl="sdpa")
    seq = prompt.to(device)
    with torch.no_grad():
        logits = stepper.start(seq.tolist())
        for i in range(new_bytes):
            nxt = logits.argmax(dim=-1)  # (B,)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            if on_byte is not None:
                on_byte(i)
            if i + 1 < new_bytes:
                logits = stepper.step(nxt)
    return seq


def bltkit_generate_figure(model: nn.Module, entropy_model: nn.Module, prompt: torch.Tensor, new_bytes: int,
                           threshold: float, *, device: torch.device, amp: Optional[torch.dtype]) -> dict:
    """The uncached reference loop, timed (``prompt`` (B, T))."""
    rec = time_generation(
        lambda n, cb: greedy_uncached(model, entropy_model, prompt, n, threshold, device, amp, cb),
        prompt.shape[1], prompt.shape[0], new_bytes, device, f"bltkit generate b{prompt.shape[0]}")
    rec["mode"] = "uncached (re-patch + full forward a byte)"
    return rec
