"""Run metrics: ``OUT/metrics.jsonl`` (one JSON object a line) and, optionally, TensorBoard.

Every logged step carries ``step``, ``loss`` (nats a target byte), ``lr``, ``bytes`` (real target
bytes seen so far), ``mean_patch_length``, ``flops`` (cumulative training FLOPs, flops.py) and
``bytes_per_s``; evaluated steps add ``bpb`` (held-out bits per byte, docs/measurement.md §1). Only rank 0
writes. On resume, records after the resumed step (from the interrupted run) are dropped so the
file reads as one uninterrupted run.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

METRICS_FILE = "metrics.jsonl"


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    f = Path(out_dir) / METRICS_FILE
    if not f.is_file():
        return []
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]


class MetricsWriter:
    def __init__(self, out_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = False,
                 resume_step: Optional[int] = None):
        self.enabled = enabled
        self.path = Path(out_dir) / METRICS_FILE
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            kept = [r for r in read_metrics(out_dir) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("tensorboard: true needs the optional 'tensorboard' package "
                                 "(pip install 'bltkit[tensorboard]'), which is not installed") from None
            self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        if self._tb is not None:
            step = record["step"]
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
