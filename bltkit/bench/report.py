"""Output of ``bltkit bench``: one JSON object a figure (a line each, machine-readable) and a
readable table. Numbers keep full precision in JSON; the table rounds."""
from __future__ import annotations

import json
import math
from typing import Any, Iterable, Optional


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def json_line(record: dict) -> str:
    return json.dumps(_clean(record), sort_keys=False)


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _rows(record: dict) -> Iterable[tuple[str, str, dict, Optional[float]]]:
    """(figure label, implementation, measurement, ratio bltkit/HF) rows of one record."""
    fig = record["figure"]
    if fig == "generate":
        for key in sorted(k for k in record.get("bltkit", {}) if k.startswith("batch")):
            yield f"generate {key}", "bltkit", record["bltkit"][key], record.get("ratio_bltkit_over_hf", {}).get(key)
            hf = (record.get("hf") or {}).get(key)
            if hf:
                yield f"generate {key}", "HF", hf, None
        return
    yield fig, "bltkit", record["bltkit"], record.get("ratio_bltkit_over_hf")
    if record.get("hf"):
        yield fig, "HF", record["hf"], None


def format_table(records: list[dict]) -> str:
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
