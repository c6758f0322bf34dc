"""One ``bltkit bench`` run: its typed settings, the figures it asks for, and their report.

``BenchSettings`` defaults reproduce the anchor (bench-S, 8 rows of 4096 bytes, fixed patch
lengths 1..8, 2 warm-up and 6 timed steps; generation batch 1 and an aggregate batch, 512-byte
prompt, 256 new bytes, greedy). ``run_benchmarks`` returns one record a figure: bltkit's
measurement, HF's on the same configuration in the same process (``hf``; ``None`` when
transformers is not importable or ``hf`` is off; ``{"error": ...}`` when HF cannot build or run
it), and the ratio bltkit / HF of bytes a second. Models are freed between figures so that peak
memory belongs to one model at a time. ``json_line`` and ``format_table`` print the records:
one JSON object a figure (full precision) and a readable table (rounded).
"""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Optional

import torch

from ..model import ByteLatentTransformer, load_blt_config
from ..nn.attention import flex_compiles
from ..runtime import autocast_dtype, device_name, resolve_device
from .hf_peer import build_hf_blt, hf_available, hf_generate_figure, hf_patch_step, hf_semantics, hf_train_figure, \
    patcher_config
from .inputs import anchor_patch_rows, blt_patch_lengths, hf_patch_lengths, mean_patch_length, random_bytes
from .measure import peak_bf16_flops, time_in_turn
from .workloads import (bltkit_generate_figure, bltkit_patch_step, bltkit_train_figure, cached_generation_figure,
                        compile_blocks, load_bench_entropy_model)

FIGURES = ("train", "patch", "generate")
ANCHOR_THRESHOLD = 1.335442066192627  # HF BltConfig.patching_threshold, nats


@dataclass
class BenchSettings:
    config: str = "bench-s"  # model config: a shipped name or a YAML path
    rows: int = 8  # rows a training / patching batch
    n_bytes: int = 4096  # bytes a row
    steps: int = 6  # timed steps (after warm-up)
    warmup: int = 2
    only: list[str] = field(default_factory=lambda: list(FIGURES))
    device: str = "auto"  # auto: cuda when available, else cpu (bltkit.runtime)
    dtype: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    attn_impl: Literal["auto", "sdpa", "flex"] = "auto"  # auto: flex on CUDA (the fast path), sdpa elsewhere
    compile: bool = False  # per-block torch.compile (opt-in)
    compile_backend: str = "inductor"  # torch.compile backend of the compiled decode step
    tuned: bool = False  # also the decode step compiled "max-autotune" (GEMMs tuned on frozen weights)
    # Pad patch columns to a multiple of this (0: off). None: 64 where something is compiled (the
    # CUDA path's flex_attention, or --compile), where a new patch count would recompile; 0
    # elsewhere, where padded columns are only extra global-model work.
    bucket: Optional[int] = None
    entropy_config: str = "small"  # entropy model config: configs/entropy/<name>.yaml or a path
    threshold: float = ANCHOR_THRESHOLD  # entropy patching threshold (nats)
    gen_prompt_bytes: int = 512
    gen_new_bytes: int = 256
    gen_batch: int = 32  # the aggregate-throughput batch (batch 1 is always measured)
    hf: bool = True  # also measure Hugging Face's BLT when transformers is importable
    hf_generate_bytes: Optional[int] = None  # new bytes for HF generate (time box); default gen_new_bytes
    seed: int = 0
    # Write torch.profiler summaries (top ops / kernels) of one train step and of one-byte decode
    # steps at batch 1 here (profile-*.txt / .json), beside the figures.
    profile_dir: Optional[str] = None
    # Also time the patch figure with the entropy model's dense T x T local mask (the reference
    # path, local_attention: dense) on the same weights and bytes, as the blocked path's baseline.
    patch_dense: bool = True

    def validate(self) -> None:
        bad = [f for f in self.only if f not in FIGURES]
        if bad or not self.only:
            raise ValueError(f"--only {','.join(self.only)!r}: unknown figure(s) {bad}; choose from {', '.join(FIGURES)}")
        for name in ("rows", "n_bytes", "steps", "gen_prompt_bytes", "gen_new_bytes", "gen_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or (self.bucket is not None and self.bucket < 0):
            raise ValueError(f"warmup {self.warmup} and bucket {self.bucket} must be >= 0")
        if self.hf_generate_bytes is not None and self.hf_generate_bytes < 1:
            raise ValueError(f"hf_generate_bytes must be >= 1, got {self.hf_generate_bytes}")

    def bucket_for(self, compiled_attention: bool) -> int:
        """The patch-column bucket in effect: as set, else 64 when anything is compiled (the
        attention kernels, or the blocks with --compile)."""
        if self.bucket is not None:
            return self.bucket
        return 64 if self.compile or compiled_attention else 0

    @property
    def hf_new_bytes(self) -> int:
        return self.hf_generate_bytes or self.gen_new_bytes


# ---- running -------------------------------------------------------------------------------------
def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _ratio(a: Optional[dict], b: Optional[dict]) -> Optional[float]:
    if not a or not b or "bytes_per_s" not in a or "bytes_per_s" not in b:
        return None
    return a["bytes_per_s"] / b["bytes_per_s"]


def _guard(fn: Callable[[], dict]) -> dict:
    """Run a peer measurement (HF, or the cached path beside the uncached one); a failure becomes
    ``{"error": ...}`` with the traceback on stderr, so one peer cannot sink the run."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - any peer failure is reported, never fatal
        return _peer_error(e)


def _peer_error(e: Exception) -> dict:
    """A peer's failure as its record, ``{"error": ...}``, its traceback on stderr."""
    traceback.print_exception(e)
    return {"error": f"{type(e).__name__}: {e}"[:400]}


def run_benchmarks(s: BenchSettings, emit: Callable[[dict], None] = lambda r: None) -> list[dict]:
    """Measure ``s.only`` and return the records; ``emit`` sees each as soon as it is done."""
    device = resolve_device(s.device)
    cfg = load_blt_config(s.config)
    if s.attn_impl != "auto":
        cfg = dataclasses.replace(cfg, attn_impl=s.attn_impl)
    cfg.validate()
    amp = autocast_dtype(s.dtype, device)
    name = device_name(device)
    peak = peak_bf16_flops(name) if device.type == "cuda" else None
    use_hf = s.hf and hf_available()
    base: dict[str, Any] = dict(config=s.config, device=name, dtype="bf16 autocast" if amp else "fp32",
                                torch=torch.__version__)
    if use_hf:
        import transformers
        base["transformers"] = transformers.__version__
    records: list[dict] = []

    def done(rec: dict) -> None:
        records.append(rec)
        emit(rec)

    def new_model() -> ByteLatentTransformer:
        with torch.device(device):
            return ByteLatentTransformer(cfg)

    if "train" in s.only:
        rows = anchor_patch_rows(s.rows, s.n_bytes)
        ids = random_bytes(s.rows, s.n_bytes + 1, s.seed)  # (B, N + 1): inputs and next-byte targets
        bpl, hpl = blt_patch_lengths(rows), hf_patch_lengths(rows)
        model = new_model()
        compiled = compile_blocks(model) if s.compile else 0
        compiled_attention = model.resolve_attn_impl(device) == "flex" and flex_compiles(device)
        mine = bltkit_train_figure(model, cfg, ids, bpl, device=device, amp=amp, steps=s.steps, warmup=s.warmup,
                                   bucket=s.bucket_for(compiled_attention), peak=peak,
                                   profile_dir=s.profile_dir)
        mine["compiled_blocks"] = compiled
        del model
        _free(device)
        hf = changes = None
        if use_hf:
            def hf_run() -> dict:
                nonlocal changes
                hf_model, changes = build_hf_blt(cfg, device)
                try:
                    return hf_train_figure(hf_model, hf_semantics(cfg), ids, hpl, bpl, device=device, amp=amp,
                                           steps=s.steps, warmup=s.warmup, peak=peak)
                finally:
                    del hf_model
                    _free(device)
            hf = _guard(hf_run)
        done(dict(figure="train", **base, rows=s.rows, bytes=s.n_bytes, steps=s.steps, warmup=s.warmup,
                  mean_patch=mean_patch_length(hpl, s.n_bytes), bltkit=mine, hf=hf,
                  hf_semantic_changes=changes, ratio_bltkit_over_hf=_ratio(mine, hf)))

    if "patch" in s.only or "generate" in s.only:
        entropy_model, em_source = load_bench_entropy_model(s.entropy_config, device)
        hf_state: dict[str, Any] = {}

        def hf_with_patcher() -> Any:
            if "model" not in hf_state:
                max_pos = max(s.n_bytes, s.gen_prompt_bytes + s.hf_new_bytes) + 16
                hf_state["model"], hf_state["changes"] = build_hf_blt(
                    cfg, device, patcher=patcher_config(entropy_model, max_pos), threshold=s.threshold)
                hf_state["model"].eval()
            return hf_state["model"]

        if "patch" in s.only:
            done(_patch_record(s, base, entropy_model, em_source, device, amp,
                               hf_with_patcher if use_hf else None))

        if "generate" in s.only:
            done(_generate_record(s, base, new_model().eval(), entropy_model, em_source, device, amp,
                                  hf_with_patcher if use_hf else None))
        hf_state.clear()
        del entropy_model
        _free(device)
    return records


def _patch_record(s: BenchSettings, base: dict, entropy_model: torch.nn.Module, em_source: str,
                  device: torch.device, amp: Optional[torch.dtype], hf_model: Optional[Callable[[], Any]]) -> dict:
    """The patch figure: bltkit's patcher, its dense-mask baseline (``patch_dense``: the entropy
    model's T x T reference mask on the same weights and bytes, so the same patches) and HF's
    patcher, timed in turn (``measure.time_in_turn``: one call of each a round, medians)."""
    ids = random_bytes(s.rows, s.n_bytes, s.seed)
    steps, records = {}, {}
    steps["bltkit"], records["bltkit"] = bltkit_patch_step(entropy_model, ids, s.threshold, device=device, amp=amp)
    if s.patch_dense:
        dense_model, _ = load_bench_entropy_model(s.entropy_config, device, local_attention="dense")
        dense_model.load_state_dict(entropy_model.state_dict())
        steps["dense"], records["dense"] = bltkit_patch_step(dense_model, ids, s.threshold, device=device, amp=amp)
    hf: Optional[dict] = None
    if hf_model is not None:
        try:
            steps["hf"], records["hf"] = hf_patch_step(hf_model(), ids, s.threshold, device=device, amp=amp)
        except Exception as e:  # noqa: BLE001 - building the peer failed: its record says so
            hf = _peer_error(e)
    timed, errors, kind = time_in_turn(steps, s.steps, s.warmup, device, desc="patch")
    for name, e in errors.items():
        if name != "hf":
            raise e  # bltkit's own paths: a failure is a bug, not a peer's
        hf = _peer_error(e)
    mine = records["bltkit"](*timed["bltkit"], kind)
    mine["entropy_model_source"] = em_source
    if "dense" in timed:
        dense = records["dense"](*timed["dense"], kind)
        mine["dense_mask"] = {k: dense[k] for k in ("ms", "bytes_per_s", "peak_mem_gib", "mean_patch")}
        mine["blocked_over_dense"] = _ratio(mine, dense)
    if "hf" in timed:
        hf = records["hf"](*timed["hf"], kind)
    return dict(figure="patch", **base, rows=s.rows, bytes=s.n_bytes, threshold=s.threshold, timing="in turn",
                bltkit=mine, hf=hf, ratio_bltkit_over_hf=_ratio(mine, hf))


def _generate_record(s: BenchSettings, base: dict, model: ByteLatentTransformer, entropy_model: torch.nn.Module,
                     em_source: str, device: torch.device, amp: Optional[torch.dtype],
                     hf_model: Optional[Callable[[], Any]]) -> dict:
    """Batch 1 and ``s.gen_batch``: bltkit cached (with the uncached loop beside it) and HF."""
    gen_entropy, _ = load_bench_entropy_model(s.entropy_config, device, attn_impl="sdpa")
    mine: dict[str, Any] = {"entropy_model_source": em_source, "cached_over_uncached": {},
                            "cached_source": "bltkit.inference.bench.generation_benchmark"}
    hf: Optional[dict] = {} if hf_model is not None else None
    ratios: dict[str, Optional[float]] = {}
    for batch in dict.fromkeys([1, s.gen_batch]):
        key = f"batch{batch}"
        prompt = random_bytes(batch, s.gen_prompt_bytes, s.seed + batch)
        uncached = bltkit_generate_figure(model, gen_entropy, prompt, s.gen_new_bytes, s.threshold,
                                          device=device, amp=amp)
        # Speculation through the compiled step at batch 1 only: a latency path, and its graphs
        # compile again for every batch shape.
        paths = (("eager",) + (("compiled",) if s.compile else ()) + (("tuned",) if s.tuned else ()) + ("speculative",)
                 + (("compiled_speculative",) if s.compile and batch == 1 else ()))
        cached = _guard(lambda: cached_generation_figure(model, entropy_model, s.threshold, batch,
                                                         s.gen_prompt_bytes, s.gen_new_bytes, device, paths,
                                                         compile_backend=s.compile_backend,
                                                         profile_dir=s.profile_dir if batch == 1 else None))
        if "error" not in cached:
            mine[key] = dict(cached, uncached=uncached)
            mine["cached_over_uncached"][key] = _ratio(cached, uncached)
        else:
            mine[key] = dict(uncached, cached_error=cached["error"])
            mine["cached_over_uncached"][key] = None
        if hf is not None:
            hf[key] = _guard(lambda: hf_generate_figure(hf_model(), prompt, s.hf_new_bytes, device=device, amp=amp))
        ratios[key] = _ratio(mine[key], hf.get(key) if hf is not None else None)
        for name, fig in mine[key].get("paths", {}).items():  # every cached path against HF, same run
            fig["ratio_over_hf"] = _ratio(fig, hf.get(key) if hf is not None else None)
    del model, gen_entropy
    return dict(figure="generate", **base, prompt_bytes=s.gen_prompt_bytes, new_bytes=s.gen_new_bytes,
                hf_new_bytes=s.hf_new_bytes if hf is not None else None, threshold=s.threshold, bltkit=mine,
                hf=hf, ratio_bltkit_over_hf=ratios)


# ---- the report ----------------------------------------------------------------------------------
def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def json_line(record: dict) -> str:
    """One record as a line of JSON; NaN and infinity become null (JSON has neither)."""
    return json.dumps(_clean(record), sort_keys=False)


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _rows(record: dict) -> Iterable[tuple[str, str, dict, Optional[float]]]:
    """(figure label, implementation, measurement, ratio bltkit/HF) rows of one record."""
    fig = record["figure"]
    if fig == "generate":
        for key in sorted(k for k in record.get("bltkit", {}) if k.startswith("batch")):
            yield f"generate {key}", "bltkit", record["bltkit"][key], record.get("ratio_bltkit_over_hf", {}).get(key)
            for name, fig in record["bltkit"][key].get("paths", {}).items():
                if name != "eager":  # the bltkit row is the eager path
                    yield f"generate {key}", name[:7], fig, fig.get("ratio_over_hf")
            hf = (record.get("hf") or {}).get(key)
            if hf:
                yield f"generate {key}", "HF", hf, None
        return
    yield fig, "bltkit", record["bltkit"], record.get("ratio_bltkit_over_hf")
    if record["bltkit"].get("dense_mask"):  # the patch figure's own baseline: the dense local mask
        yield fig, "dense", record["bltkit"]["dense_mask"], None
    if record.get("hf"):
        yield fig, "HF", record["hf"], None


def format_table(records: list[dict]) -> str:
    """The records as a readable table, one line an implementation and figure."""
    head = f"{'figure':<18} {'impl':<7} {'bytes/s':>12} {'ms':>10} {'MFU':>7} {'peak GiB':>9} {'bltkit/HF':>9}"
    lines = [head, "-" * len(head)]
    for rec in records:
        for fig, impl, m, ratio in _rows(rec):
            if "error" in m:
                lines.append(f"{fig:<18} {impl:<7} error: {m['error'][:60]}")
                continue
            ms = m.get("step_ms", m.get("ms"))
            if ms is None and m.get("s") is not None:
                ms = m["s"] * 1e3
            mfu = m.get("mfu")
            lines.append(f"{fig:<18} {impl:<7} {_fmt(m.get('bytes_per_s'), ',.0f'):>12} {_fmt(ms, ',.1f'):>10} "
                         f"{'-' if mfu is None else format(100 * mfu, '.1f') + '%':>7} "
                         f"{_fmt(m.get('peak_mem_gib'), '.2f'):>9} {_fmt(ratio, '.2f'):>9}")
    if records:
        r = records[0]
        kinds = sorted({m["peak_mem_kind"] for rec in records for _, _, m, _ in _rows(rec) if "peak_mem_kind" in m})
        lines.append(f"device {r.get('device')}, {r.get('dtype')}, config {r.get('config')}; MFU against the dense "
                     f"bf16 peak (none on CPU or without bf16); peak memory: {', '.join(kinds)}")
    return "\n".join(lines)
