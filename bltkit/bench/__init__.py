"""``bltkit bench``: speed figures for the BLT beside Hugging Face's BLT, in one process.

Why a package of its own: measurement.md asks for every comparison (bltkit vs a peer, cached vs
uncached) to be a ratio taken in the same process on the same GPU, with the anchor's exact
settings (shared/anchors/README.md, "bench-S"). Each module holds one concept:

- ``settings``   the typed options of a run (``BenchSettings``);
- ``inputs``     the anchor's random bytes and fixed patch lengths, in both conventions;
- ``buckets``    padding patch counts to a bucket (no recompiles; a numerical no-op);
- ``compile``    opt-in per-block ``torch.compile``;
- ``hardware``   the dense bf16 peak table (MFU) and device names;
- ``timing``     synchronised timing and peak memory;
- ``entropy``    the entropy model used for the patching figure, and entropy -> patch lengths;
- ``hf_peer``    Hugging Face's ``BltForCausalLM`` built from the same bltkit config;
- ``train_step`` / ``patching`` / ``generation``  the three figures;
- ``report``     JSON lines and the readable table; ``runner`` ties them together.
"""
from .buckets import pad_patch_columns
from .compile import compile_blocks
from .hardware import peak_bf16_flops
from .inputs import anchor_patch_rows, blt_patch_lengths, hf_patch_lengths
from .runner import run_benchmarks
from .settings import BenchSettings

__all__ = [
    "BenchSettings", "anchor_patch_rows", "blt_patch_lengths", "compile_blocks", "hf_patch_lengths",
    "pad_patch_columns", "peak_bf16_flops", "run_benchmarks",
]
