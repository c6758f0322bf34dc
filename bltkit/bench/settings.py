"""Typed options of one ``bltkit bench`` run. The defaults reproduce the anchor's settings
(shared/anchors/README.md: bench-S, 8 rows of 4096 bytes, fixed patch lengths 1..8, 2 warm-up and
6 timed steps; generation batch 1, 512-byte prompt, 256 new bytes, greedy)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

FIGURES = ("train", "patch", "generate")
ANCHOR_THRESHOLD = 1.335442066192627  # HF BltConfig.patching_threshold, nats (blt-reference §11.1)


@dataclass
class BenchSettings:
    config: str = "bench-s"  # model config: a shipped name or a YAML path
    rows: int = 8  # rows a training / patching batch
    n_bytes: int = 4096  # bytes a row
    steps: int = 6  # timed steps (after warm-up)
    warmup: int = 2
    only: list[str] = field(default_factory=lambda: list(FIGURES))
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    attn_impl: Literal["auto", "sdpa", "flex"] = "auto"  # auto: flex on CUDA (the fast path), sdpa elsewhere
    compile: bool = False  # per-block torch.compile (opt-in)
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
