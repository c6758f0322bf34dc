"""The ratio-loss objective and compression figures of a model that learns its boundaries (the
``hnet`` kind, and a BLT with ``patcher: {scheme: learned}``): one implementation for both.

``RoutingObjective.penalty`` is the third value of ``Task.loss``: ``alpha * L_ratio * n`` with
``L_ratio = N/(N-1) ((N-1) F G + (1-F)(1-G))`` over the micro-batch's real bytes
(``bltkit.nn.chunking.ratio_loss``; arXiv 2507.07955 §2.2.3), ``n`` its real targets: the loop
divides every micro-batch's nats and penalty by the step's targets, so the step's objective is
``CE + alpha * (target-weighted mean of L_ratio)``. It records what each micro-batch decided;
``step_stats`` sums a step's records (the loop adds them over ranks) and ``step_metrics`` turns
them into the logged figures:

- ``ratio_loss``: the mean over the step's micro-batches;
- ``boundary_fraction`` F (real bytes that open a chunk or patch) and ``bytes_per_<unit>``
  (1/F, the achieved compression);
- ``warning`` when compression collapses: rows whose every byte opens one, or rows with none
  beyond the forced starts (the row's first byte and each document's). The run goes on; the
  record (and stderr) says so instead of a silent NaN.
"""
from __future__ import annotations

from typing import Any

import torch

from ..nn.chunking import Routing, ratio_loss


class RoutingObjective:
    """Ratio loss toward ``target`` (N) weighted by ``weight`` (alpha); ``unit`` names what a
    boundary opens in the logged figures (``chunk`` for the H-Net, ``patch`` for the BLT)."""

    def __init__(self, target: float, weight: float, unit: str):
        self.target, self.weight, self.unit = float(target), float(weight), unit
        self.micro: list[dict[str, Any]] = []  # this step's records (``step_stats`` empties it)

    def penalty(self, ids: torch.Tensor, routing: Routing, starts: torch.Tensor, valid: torch.Tensor,
                n_targets: torch.Tensor) -> torch.Tensor:
        """``alpha * L_ratio * n_targets`` of one micro-batch (the objective's units), recorded."""
        rl = ratio_loss(routing.boundary, routing.prob, self.target, valid)
        b = routing.boundary
        per_row = b.sum(dim=1)
        real = valid.sum(dim=1)
        forced = (starts & valid).sum(dim=1)
        self.micro.append({
            "ids": ids.detach(), "boundary": b.detach(), "valid": valid.detach(), "ratio_loss": float(rl.detach()),
            "boundaries": int(per_row.sum()), "bytes": int(real.sum()),
            "rows_all": int(((per_row == real) & (real > 1)).sum()),
            "rows_none": int(((per_row == forced) & (real > forced)).sum()),
        })
        return self.weight * rl * n_targets

    def step_stats(self) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """The step's sums by name (``Task.step_stats``) and its micro-batch records (the caller
        counts FLOPs from their ids and boundaries); the records are consumed."""
        micro, self.micro = self.micro, []
        return {
            "ratio_loss_sum": float(sum(m["ratio_loss"] for m in micro)), "micro_batches": float(len(micro)),
            "boundaries": float(sum(m["boundaries"] for m in micro)), "real_bytes": float(sum(m["bytes"] for m in micro)),
            "rows": float(sum(int(m["ids"].shape[0]) for m in micro)),
            "rows_all": float(sum(m["rows_all"] for m in micro)), "rows_none": float(sum(m["rows_none"] for m in micro)),
        }, micro

    def step_metrics(self, stats: dict[str, float]) -> dict[str, Any]:
        """The logged figures from ``step_stats`` summed over ranks (see the module docstring)."""
        u = self.unit
        f = stats["boundaries"] / max(stats["real_bytes"], 1.0)
        rec: dict[str, Any] = {
            "ratio_loss": stats["ratio_loss_sum"] / max(stats["micro_batches"], 1.0),
            "boundary_fraction": f,
            f"bytes_per_{u}": stats["real_bytes"] / max(stats["boundaries"], 1.0),
        }
        problems = []
        rows = int(stats["rows"])
        if stats["rows_all"]:
            problems.append(f"{int(stats['rows_all'])} of {rows} rows have every byte opening a {u}")
        if stats["rows_none"]:
            problems.append(f"{int(stats['rows_none'])} of {rows} rows have no {u} beyond the forced starts")
        if problems:
            rec["warning"] = (f"compression collapsed: {'; '.join(problems)} (bytes per {u} "
                              f"{rec[f'bytes_per_{u}']:.2f}, target {self.target:g})")
        return rec


__all__ = ["RoutingObjective"]
