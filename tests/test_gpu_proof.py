"""scripts/gpu-proof.sh: its CPU smoke mode runs every stage and writes every file the GPU run
writes (docs/benchmarks.md, "The GPU proof"), and the summary puts each figure beside its target."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bltkit.bench.proof import TARGETS, summary

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.xdist_group("heavy")
def test_smoke_mode_runs_every_stage_and_writes_every_file(tmp_path):
    out = tmp_path / "proof"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-proof.sh"), "--smoke", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1200)
    stages = dict(line.split("\t")[:2] for line in (out / "stages.tsv").read_text().splitlines())
    assert stages == {s: "0" for s in ("env", "gpu-tests", "bench", "bench-compiled", "train-400m", "summary")}, \
        (stages, r.stderr[-3000:])
    assert r.returncode == 0
    assert "cpu (no CUDA)" in (out / "env.txt").read_text()
    collected = (out / "gpu-tests.txt").read_text()
    assert "collected" in collected and not collected.lstrip().startswith("0")

    bench = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines() if line.startswith("{")]
    assert [b["figure"] for b in bench] == ["train", "patch", "generate"]
    for b in bench:
        assert b["hf"] is not None and "error" not in json.dumps(b["hf"]), b["figure"]
    assert bench[2]["bltkit"]["batch1"]["bytes_per_s"] > 0
    compiled = [json.loads(line) for line in (out / "bench-compiled.jsonl").read_text().splitlines()
                if line.startswith("{")]
    assert set(compiled[0]["bltkit"]["batch1"]["paths"]) == {"eager", "compiled", "speculative", "compiled_speculative"}

    for name in ("profiles/profile-train-step", "profiles/profile-decode-step-b1", "profiles-400m/profile-train-step"):
        rec = json.loads((out / f"{name}.json").read_text())
        assert rec["top"] and all(t["self_us"] >= 0 for t in rec["top"])
        assert any(t["op"].startswith("aten::") for t in rec["top"])
        assert "Self CPU" in (out / f"{name}.txt").read_text()
    text = (out / "summary.md").read_text()
    for what, _, _ in TARGETS:
        assert f"| {what} |" in text
    assert "n/a (CPU smoke)" in text and "decode-step-b1" in text


def test_summary_puts_each_figure_beside_its_target(tmp_path):
    (tmp_path / "env.txt").write_text("device NVIDIA H200\n")
    (tmp_path / "stages.tsv").write_text("bench\t0\t100\ntrain-400m\t124\t100\n")
    recs = [dict(figure="train", ratio_bltkit_over_hf=3.5, bltkit=dict(mfu=0.31, peak_mem_gib=10.0),
                 hf=dict(peak_mem_gib=12.0)),
            dict(figure="patch", ratio_bltkit_over_hf=2.0),
            dict(figure="generate", ratio_bltkit_over_hf=dict(batch1=200.0),
                 bltkit=dict(batch1=dict(bytes_per_s=2700.0), batch32=dict(bytes_per_s=20000.0)))]
    (tmp_path / "bench.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n{\"cut off")
    text = summary(tmp_path)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["training bench-S, bltkit / HF bytes/s"].endswith("| yes |")
    assert rows["training bench-S, MFU"].endswith("| no |")
    assert rows["patching, bltkit / HF bytes/s"].endswith("| no |")
    assert rows["generation batch 1, bltkit / HF"].endswith("| yes |")
    assert rows["generation batch 1, bytes/s"].endswith("| yes |")
    assert rows["generation batch 32, aggregate bytes/s"].endswith("| no |")
    assert rows["training peak memory GiB, bltkit vs HF"].endswith("| yes |")
    assert "| train-400m | 124 (time limit) | 100 |" in text
    assert "400m train step bytes_per_s | missing" in text
