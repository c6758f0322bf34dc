"""Regenerate ``tiny_losses.json``: the first 20 per-step losses of configs/train/tiny.yaml on CPU.

Run only when a change is *meant* to move the losses (model, data, packing, optimiser):
    python tests/golden/make_tiny_losses.py
"""
import json
import platform
import tempfile
from pathlib import Path

import torch

from bltkit.training.config import load_train_config
from bltkit.training.loop import train

OVERRIDES = ["steps=20", "eval_every=0", "checkpoint_every=0", "progress=false", "data.eval_rows=1"]

if __name__ == "__main__":
    torch.set_num_threads(1)  # as the test runs it
    cfg = load_train_config("tiny", OVERRIDES)
    with tempfile.TemporaryDirectory() as d:
        losses = train(cfg, Path(d) / "run").losses
    out = Path(__file__).with_name("tiny_losses.json")
    out.write_text(json.dumps({"config": "tiny", "overrides": OVERRIDES, "torch": torch.__version__,
                               "machine": platform.machine(), "threads": 1, "losses": losses}, indent=1) + "\n")
    print(f"wrote {out}")
