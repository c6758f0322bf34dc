"""The comparison's outputs: ``results.json`` (every figure), ``results.md`` (the table) and
``bpb_vs_flops.png`` (held-out bits per byte against cumulative training FLOPs, one curve per
variant, labelled with its bytes a patch or chunk; matplotlib, headless). Bits per byte and FLOPs
as docs/measurement.md §1-§2 defines them; the columns as docs/compare.md describes them.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PLOT_PNG = "bpb_vs_flops.png"


def _fmt_int(x: float) -> str:
    return f"{x:.3g}" if x >= 1e5 else f"{int(x)}"


def _bytes_per_patch_cell(r: dict) -> str:
    cell = f"{r.get('bytes_per_patch', r['mean_patch_length']):.2f}"
    return cell + (f" (target {r['target_ratio']:g})" if r.get("target_ratio") else "")


def results_table(results, budget) -> str:
    """The Markdown table of ``results`` (VariantResult or their dicts)."""
    rows = [asdict(r) if not isinstance(r, dict) else r for r in results]
    head = ("| variant | kind | training FLOPs | bytes seen | parameters (non-emb.) | held-out bpb | "
            "bytes / patch or chunk | mean patch length | wall-clock s |")
    lines = [f"Budget: {budget.kind} = {budget.value:.3g} (matched across variants).", "", head,
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        bpb = f"{r['heldout_bpb']:.4f}" if r.get("heldout_bpb") is not None else "-"
        lines.append(f"| {r['name']} | {r['kind']} | {_fmt_int(r['training_flops'])} | {_fmt_int(r['bytes_seen'])} | "
                     f"{_fmt_int(r['parameters'])} ({_fmt_int(r['parameters_non_embedding'])}) | {bpb} | "
                     f"{_bytes_per_patch_cell(r)} | {r['mean_patch_length']:.2f} | {r['wall_clock_s']:.1f} |")
    if any(r.get("entropy_flops") for r in rows):
        lines += ["", "Entropy-model patching FLOPs (not in the training FLOPs): "
                  + ", ".join(f"{r['name']} {r['entropy_flops']:.3g}" for r in rows if r.get("entropy_flops"))]
    learned = [r for r in rows if r.get("target_ratio")]
    if learned:
        lines += ["", "Learned boundaries (" + ", ".join(r["name"] for r in learned) + ") are planned at their target "
                  "compression; their training FLOPs follow the compression they achieved (planned: "
                  + ", ".join(f"{r['name']} {r.get('planned_flops', 0):.3g}" for r in learned) + ")."]
    lines += ["", "bytes / patch or chunk: the variant's own unit, K of a fixed-K run (1: bytes), the bytes a "
                  "patch (BLT) or chunk (H-Net) achieved in its final phase; mean patch length: training bytes "
                  "per position of the global / backbone model over the whole run (K in a patch phase, 1 in a "
                  "byte phase)."]
    return "\n".join(lines) + "\n"


def plot_series(results) -> list[tuple[str, list[float], list[float]]]:
    """(label, FLOPs, held-out bpb) of every variant: its curve, or its final point when the curve
    has none past zero FLOPs."""
    out = []
    for r in results:
        r = asdict(r) if not isinstance(r, dict) else r
        pts = [(c["flops"], c["bpb"]) for c in r["curve"] if c["flops"] > 0]
        if not pts and r.get("heldout_bpb") is not None and r["training_flops"] > 0:
            pts = [(r["training_flops"], r["heldout_bpb"])]
        label = f"{r['name']} ({r.get('bytes_per_patch', r['mean_patch_length']):.2g} B/patch)"
        out.append((label, [float(x) for x, _ in pts], [float(y) for _, y in pts]))
    return out


def plot_bpb_vs_flops(results, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ["-", "--", ":", "-."]
    for i, (label, xs, ys) in enumerate(plot_series(results)):
        ax.plot(xs, ys, marker="o", markersize=3, linestyle=styles[(i // 10) % len(styles)], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title("held-out bpb against training compute")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(cfg, results, out_dir: str | Path, entropy_summary: Optional[dict] = None) -> None:
    out = Path(out_dir)
    payload = {"budget": asdict(cfg.budget), "entropy_model": entropy_summary,
               "variants": [asdict(r) for r in results]}
    (out / RESULTS_JSON).write_text(json.dumps(payload, indent=2))
    (out / RESULTS_MD).write_text("# Patching strategies at a matched budget\n\n" + results_table(results, cfg.budget))
    plot_bpb_vs_flops(results, out / PLOT_PNG)
