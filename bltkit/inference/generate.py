"""The generation loop, shared by the cached and the recomputing paths.

A *stepper* turns bytes into next-byte logits for a batch of rows: ``start(prompts)`` feeds the
prompts (lists of ids, BOS first) and returns logits (B, V); ``step(ids, live)`` feeds one id a
row and returns logits (B, V), rows whose ``live`` is False (finished) staying as they are, so
shapes never change. ``CachedStepper`` (``stepper.py``) drives the models' cached forwards;
``RecomputeStepper`` (``recompute.py``) reruns the patcher and the whole model on the full prefix
for every byte, as the reference does.

The loop samples (``sampling.py``), stops a row at EOS, at a stop string or after
``max_new_bytes`` ids, and masks finished rows. It yields events ``(row, id, finish)`` as it
goes, so ``stream`` and ``generate`` are the same code.

Output bytes: the raw bytes of the generated ids; EOS ends the row and is not part of them;
other special ids (BOE, BOS, 3) are fed back to the model but carry no byte. A stop string ends
the row and is cut from the output, with whatever followed it in the same step (nothing: one byte
a step).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Protocol, Sequence

import torch

from ..data.vocab import EOS_ID, OFFSET
from .sampling import SamplingParams, row_generators, sample


class Stepper(Protocol):
    def start(self, prompts: list[list[int]]) -> torch.Tensor: ...
    def step(self, ids: torch.Tensor, live: torch.Tensor) -> torch.Tensor: ...


@dataclass
class Generation:
    """One row's result."""

    text: str  # the new bytes decoded as UTF-8 (invalid sequences -> U+FFFD)
    bytes: bytes  # the new raw bytes
    stop_reason: str  # "eos" | "stop" | "length"
    new_ids: int  # ids generated (EOS included)
    logits: Optional[list[torch.Tensor]] = field(default=None, repr=False)  # per step (V,), when traced


@dataclass
class _Row:
    out: bytearray = field(default_factory=bytearray)
    n_ids: int = 0
    finish: Optional[str] = None
    logits: Optional[list] = None


def decode_loop(stepper: Stepper, prompts: list[list[int]], max_new_bytes: int, params: SamplingParams,
                seeds: Sequence[int], stop: Sequence[bytes] = (), trace: bool = False,
                rows_out: Optional[list] = None, ignore_eos: bool = False) -> Iterator[tuple[int, int, Optional[str]]]:
    """Generate; yield ``(row, id, finish)`` for every id, ``finish`` set on a row's last one.

    ``rows_out`` (a list) receives the per-row states, for ``collect``. ``ignore_eos`` (for
    benchmarks, as vLLM's option of that name): EOS is fed back like any id and ends no row, so
    every row makes exactly ``max_new_bytes`` ids (random weights meet EOS early).
    """
    n = len(prompts)
    rows = [_Row(logits=[] if trace else None) for _ in range(n)]
    if rows_out is not None:
        rows_out.extend(rows)
    gens = row_generators(list(seeds)) if not params.greedy else None
    live = [True] * n
    logits = stepper.start(prompts)
    while True:
        ids = sample(logits, params, gens)  # (B,); a finished row's draw is ignored
        ids_list = ids.tolist()
        for r in range(n):
            row, tok = rows[r], ids_list[r]
            if not live[r]:
                continue
            if row.logits is not None:
                row.logits.append(logits[r].detach().float().cpu())
            row.n_ids += 1
            if tok == EOS_ID and not ignore_eos:
                row.finish = "eos"
            else:
                if tok >= OFFSET:
                    row.out.append(tok - OFFSET)
                    hit = _stop_hit(row.out, stop)
                    if hit is not None:
                        del row.out[hit:]
                        row.finish = "stop"
            if row.finish is None and row.n_ids >= max_new_bytes:
                row.finish = "length"
            yield r, tok, row.finish
            live[r] = row.finish is None
        if not any(live):
            return
        logits = stepper.step(ids, torch.tensor(live, device=ids.device))


def _stop_hit(out: bytearray, stop: Sequence[bytes]) -> Optional[int]:
    """Start of the earliest stop string that ends at the last byte, or None."""
    best = None
    for s in stop:
        if len(out) >= len(s) and out.endswith(s):
            pos = len(out) - len(s)
            best = pos if best is None else min(best, pos)
    return best


def collect(stepper: Stepper, prompts: list[list[int]], max_new_bytes: int, params: SamplingParams,
            seeds: Sequence[int], stop: Sequence[bytes] = (), trace: bool = False) -> list[Generation]:
    """Run the loop to the end; one ``Generation`` a prompt."""
    rows: list[_Row] = []
    for _ in decode_loop(stepper, prompts, max_new_bytes, params, seeds, stop, trace, rows_out=rows):
        pass
    return [Generation(bytes(r.out).decode("utf-8", errors="replace"), bytes(r.out), r.finish or "length", r.n_ids, r.logits)
            for r in rows]


def stream_text(stepper: Stepper, prompt: list[int], max_new_bytes: int, params: SamplingParams, seed: int,
                stop: Sequence[bytes] = ()) -> Iterator[str]:
    """Text pieces of one row as they come. A piece never ends inside a UTF-8 character
    (``utf8_complete_prefix``) nor inside what may become a stop string, so the pieces joined
    equal ``collect``'s text for the same arguments."""
    from ..data.vocab import utf8_complete_prefix

    rows: list[_Row] = []
    emitted = 0
    for _, _, finish in decode_loop(stepper, [prompt], max_new_bytes, params, [seed], stop, rows_out=rows):
        out = rows[0].out
        if finish is not None:
            if len(out) > emitted:
                yield bytes(out[emitted:]).decode("utf-8", errors="replace")
            return
        safe = len(out) - _held_for_stop(out, stop)
        safe = utf8_complete_prefix(bytes(out[emitted:safe])) + emitted if safe > emitted else emitted
        if safe > emitted:
            yield bytes(out[emitted:safe]).decode("utf-8", errors="replace")
            emitted = safe


def _held_for_stop(out: bytearray, stop: Sequence[bytes]) -> int:
    """Length of the longest tail of ``out`` that is a proper prefix of a stop string."""
    held = 0
    for s in stop:
        for m in range(min(len(s) - 1, len(out)), held, -1):
            if out.endswith(s[:m]):
                held = m
                break
    return held
