"""``bltkit bench``: speed figures for the BLT beside Hugging Face's BLT, in one process.

Why a package of its own: every comparison (bltkit vs a peer, cached vs uncached) is a ratio
taken in the same process on the same device, with the anchor's exact settings (bench-S; see
docs/benchmarks.md). Device and precision come from ``bltkit.runtime``, as for training.

- ``inputs``     the anchor's random bytes and fixed patch lengths, in both conventions, and
                 patch-count buckets (a numerical no-op that keeps compiled shapes few);
- ``measure``    synchronised timing (paths of one figure in turn: ``time_in_turn``), peak memory,
                 the dense bf16 peak table (MFU), the timed optimiser step and timed generation,
                 shared by both implementations;
- ``workloads``  bltkit's train and generate figures (``bltkit_*_figure``), its patch step
                 (``bltkit_patch_step``), per-block compile and the entropy model they patch with;
- ``hf_peer``    Hugging Face's ``BltForCausalLM`` from the same config, its figures
                 (``hf_*_figure``) and its patch step (``hf_patch_step``);
- ``runner``     the settings (``BenchSettings``), ``run_benchmarks`` and the report (JSON lines, table).
"""
from .inputs import anchor_patch_rows, blt_patch_lengths, bucket_size, hf_patch_lengths, pad_patch_columns
from .measure import mfu, peak_bf16_flops
from .runner import BenchSettings, format_table, json_line, run_benchmarks
from .workloads import compile_blocks

__all__ = [
    "BenchSettings", "anchor_patch_rows", "blt_patch_lengths", "bucket_size", "compile_blocks", "format_table",
    "hf_patch_lengths", "json_line", "mfu", "pad_patch_columns", "peak_bf16_flops", "run_benchmarks",
]
