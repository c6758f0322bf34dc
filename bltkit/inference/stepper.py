"""The cached stepper: the bookkeeping around the models' own cached forwards.

The models step themselves (``model(ids, cache=...)``: ``bltkit.model.blt``, ``ByteLM``,
``EntropyModel``); this file only decides which rows and bytes are real, where patches close
(``boundaries.OnlineBoundaries`` on the entropy model's output) and which logits come back.

Per fed byte n of a BLT: entropy H_n (the entropy model's cached step, entropy schemes only) ->
does n + 1 start a patch? -> the BLT's cached step (closing the patch when it does) -> logits.

Shapes never change after ``start``: every cache is preallocated for ``max_bytes`` (BOS +
prompt + new bytes), a ragged batch's prompts are fed as one right-padded chunk with a ``valid``
mask, and a finished row stays in the batch, masked (``live``), so the one-byte ``step`` holds no
host sync and compiles whole (``compile=True``: ``torch.compile(fullgraph=True)``) or is captured
as a CUDA graph (``cuda_graph=True``). A step past ``max_bytes`` is an error naming both lengths:
caches are sized once, from the request, and never grow.

The eager step lets the host skip the global model when no patch closed (one read of a count)
and reads only the cache slots the longest row has reached (``see``; so does the prompt's chunk
on every path); the compiled and graph steps read every slot and run the global model on every
byte with the closing mask instead (static shapes), except a compiled CPU step split at the
global model (``split_global``), where the host reads between two graphs whether a patch closed.
``compile=TUNED`` (``"max-autotune"``) tunes the compiled step's matrix products against the
weights frozen into it; each such graph guards on a tag of the weights it froze.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

from ..patching.config import PatcherConfig
from ..patching.entropies import entropy
from .boundaries import OnlineBoundaries


# ``compile=TUNED``: inductor with its GEMMs autotuned against the weights frozen as constants.
# A batch-1 step's matmuls are matrix-vector products, and on a CPU the default (MKL) reads
# weights at 14 GB/s, one thread or two alike, where inductor's CPP GEMM template on a frozen
# weight reads them at 26 GB/s (docs/benchmarks.md, "what limits a step"): minutes of tuning, a
# packed copy of the weights, and a graph that keeps the weights it was compiled with.
TUNED = "max-autotune"


def tuned_options(device: torch.device) -> dict:
    """Inductor options of a ``TUNED`` step on ``device`` (beside ``freezing``, always on)."""
    return {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN" if device.type == "cpu" else "ATEN,TRITON"}

# The split's second graph call and host read cost about 0.18 ms a step on the 2-core CPU; a
# global model this size costs more than that a call, so skipping it on the bytes that close no
# patch repays the split (tiny BLT, 0.5M: one graph 1.00 ms a step, split 1.18 ms; bench-S, 156M,
# 4-byte patches: 74 -> 35 ms; docs/benchmarks.md, "Cached generation").
SPLIT_MIN_GLOBAL_PARAMS = 2_000_000


def _later_steps():
    """The stance of a compiled step after a generation's first: only the guards that tell
    compiled entries apart (torch >= 2.7; a plain context before)."""
    try:
        return torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
    except (AttributeError, TypeError):  # pragma: no cover - older torch
        return contextlib.nullcontext()


def pad_prompts(prompts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and the mask of real ones."""
    t = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), t, dtype=torch.int64)
    valid = torch.zeros(len(prompts), t, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = torch.tensor(p, dtype=torch.int64)
        valid[i, :len(p)] = True
    return ids.to(device), valid.to(device)


class CachedStepper:
    """``start(prompts)`` -> logits (B, V); ``step(ids (B,), live (B,))`` -> logits (B, V)."""

    def __init__(self, model: nn.Module, patcher: Optional[PatcherConfig], entropy_model: Optional[nn.Module],
                 max_bytes: int, device: torch.device, compile: bool | str = False, cuda_graph: bool = False,
                 learned_patches: bool = False, split_global: Optional[bool] = None):
        """``compile``: True compiles the one-byte step with inductor, ``TUNED``
        (``"max-autotune"``) with inductor's autotuned GEMMs on frozen weights (for a model whose
        weights no longer change), another string names a ``torch.compile`` backend (the tests'
        cheap ``aot_eager``); always ``fullgraph=True``.
        ``split_global`` (a compiled BLT with a patcher): compile the step as two graphs, the
        encoder half and the global-plus-decoder half, and read on the host between them
        whether a patch closed, so the global model runs only on the bytes that close one, as
        the eager step does; off, the one-graph step runs the global model on every byte,
        masked. Default: on a CPU (no device queue for that read to drain) with a global model
        of at least ``SPLIT_MIN_GLOBAL_PARAMS``.
        ``learned_patches``: a BLT that places its own patches (no ``patcher``): it steps itself
        and, like a BLT with a patcher, is told how many patches its global model may run on."""
        self.is_blt = patcher is not None
        if self.is_blt:
            patcher.check_ready()
            if patcher.needs_scores and entropy_model is None:
                raise ValueError(f"patcher scheme {patcher.scheme!r} needs an entropy model, and none was loaded")
        if cuda_graph and torch.device(device).type != "cuda":
            raise ValueError(f"cuda_graph=True needs a CUDA device, got {device}")
        self.model, self.patcher = model, patcher
        self.learned_patches = learned_patches
        self.em = entropy_model if self.is_blt and patcher.needs_scores else None
        self.max_bytes, self.device = max_bytes, torch.device(device)
        self.static = compile or cuda_graph
        self.compiled = bool(compile)
        self.cuda_graph = cuda_graph
        if split_global and not (compile and self.is_blt and not learned_patches):
            raise ValueError("split_global=True needs compile and a BLT with a patcher")
        if split_global is None:
            split_global = self.device.type == "cpu" and self.is_blt and \
                sum(p.numel() for p in model.global_transformer.parameters()) >= SPLIT_MIN_GLOBAL_PARAMS
        self.split = bool(compile) and self.is_blt and not learned_patches and split_global
        self.tuned = compile == TUNED
        backend = compile if isinstance(compile, str) and not self.tuned else "inductor"
        # On a CPU, inductor's C++ wrapper calls the step's kernels without a Python call per
        # kernel: 12% more bytes a second on the tiny BLT (docs/benchmarks.md, "Cached generation").
        options = {"cpp_wrapper": True} if backend == "inductor" and self.device.type == "cpu" else {}
        if self.tuned:
            options.update(tuned_options(self.device))
        options = options or None

        def compiled(fn):
            return torch.compile(fn, fullgraph=True, dynamic=False, backend=backend, options=options)

        self._step_fn = compiled(self._step_eager) if compile and not self.split else self._step_eager
        if self.split:
            self._front_fn = compiled(self._front)
            self._back_fns = (compiled(self._back_draft), compiled(self._back_global))
        self._graph = None
        self._warm: set = set()  # the compiled graphs this generation has called
        if self.tuned:  # the weights a tuned graph freezes (``_frozen_guard``)
            self._tag = self._weights_tag() & (2**62 - 1)

    # ---- the caches ------------------------------------------------------------------------------
    def start(self, prompts: list[list[int]]) -> torch.Tensor:
        b = len(prompts)
        self.longest = max(len(p) for p in prompts)
        self._check_room(self.longest)
        self.cache = self.model.new_cache(b, self.max_bytes)
        self.ecache = self.em.new_cache(b, self.max_bytes) if self.em is not None else None
        self.bounds = OnlineBoundaries(self.patcher, b, self.device) if self.is_blt else None
        self._graph = None
        ids, valid = pad_prompts(prompts, self.device)
        self._warm = set()  # each graph's first call checks every guard
        with torch.no_grad():
            logits = self.feed(ids, valid)  # (B, T, V)
        if self.static:
            self._see(self.max_bytes)  # a compiled step reads every slot: static shapes
        last = valid.sum(dim=1) - 1
        return logits[torch.arange(b, device=self.device), last]

    def step(self, ids: torch.Tensor, live: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Feed one id a row (a finished row's ``live`` is False: its caches stay as they are)."""
        self._check_room(self.longest + 1)
        self.longest += 1
        ids = ids.to(self.device)
        live = torch.ones_like(ids, dtype=torch.bool) if live is None else live.to(self.device)
        with torch.no_grad():
            if self.cuda_graph:
                return self._graph_step(ids, live)
            if self.split:
                state = self._call("encode", self._front_fn, ids, live)
                width = int(self.cache.waiting())  # the host read between the two graphs
                return self._call(width, self._back_fns[width], *state)
            return self._call("step", self._step_fn, ids, live)

    def _call(self, key, fn, *args):
        if not self.compiled or key not in self._warm:
            self._warm.add(key)
            if self.tuned:  # inductor reads ``freezing`` from its global config, not ``options``
                from torch._inductor import config as inductor_config
                with inductor_config.patch(freezing=True):
                    return fn(*args)
            return fn(*args)
        # Every call of a graph in a generation has its first call's inputs (the same objects,
        # shapes and settings), which passed every guard; the later ones evaluate only the
        # guards that tell compiled entries apart (``torch.compiler.set_stance``): 13% of a tiny
        # compiled step (docs/benchmarks.md, "Cached generation").
        with _later_steps():
            return fn(*args)

    def _check_room(self, n: int) -> None:
        if n > self.max_bytes:
            raise ValueError(f"a row would reach {n} bytes, past the {self.max_bytes} bytes this generation's "
                             "caches were preallocated for (caches do not grow: size max_bytes for BOS + prompt + "
                             "new bytes)")

    # ---- one chunk of bytes through every model --------------------------------------------------
    def feed(self, ids: torch.Tensor, valid: torch.Tensor, global_width: Optional[int] = None) -> torch.Tensor:
        """Feed ``ids`` (B, T) where ``valid``; logits (B, T, V) fp32."""
        if hasattr(self.cache, "see") and (not self.static or ids.shape[1] > 1):  # eager (a prompt's
            self._see(int(self.cache.length.max()) + ids.shape[1])  # chunk is, on every path): the slots rows reach
        if self.learned_patches:
            return self.model(ids, cache=self.cache, valid=valid, global_width=global_width)
        if not self.is_blt:
            return self.model(ids, cache=self.cache, valid=valid)
        return self.model(ids, cache=self.cache, starts_next=self._starts_next(ids, valid), valid=valid,
                          global_width=global_width)

    def _starts_next(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: whether a patch starts after each byte (the entropy model's cached step
        first, for the entropy schemes)."""
        pos = self.cache.length[:, None] + torch.arange(ids.shape[1], device=ids.device)  # (B, T)
        h = entropy(self.em(ids, cache=self.ecache, valid=valid)) if self.em is not None else None  # (B, T)
        return self.bounds.decide(ids, pos, h, valid)

    def _see(self, n: int) -> None:
        """Every cache that can reads its first ``n`` slots only (the H-Net's reads every slot)."""
        for c in (self.cache, self.ecache):
            if c is not None and hasattr(c, "see"):
                c.see(n)

    def _weights_tag(self) -> int:
        """Which weights, in which version, a tuned graph froze: the models' identities and the
        in-place version counters of their parameters (an optimizer step or ``load_state_dict``
        moves them)."""
        mods = [m for m in (self.model, self.em) if m is not None]
        return hash((tuple(id(m) for m in mods), sum(p._version for m in mods for p in m.parameters())))

    def _frozen_guard(self) -> None:
        # Traced into every tuned graph: comparing the tag makes its value a guard, so a graph
        # that froze other weights (another model, or this one before an update) is not reused.
        if self.tuned and self._tag == -1:  # never true: the comparison is what matters
            raise RuntimeError("unreachable")

    def _step_eager(self, ids: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        self._frozen_guard()
        return self.feed(ids[:, None], live[:, None], 1 if self.static else None)[:, 0]  # (B, V)

    # ---- the split step (``split_global``): two graphs, the host choosing the second ----------------
    def _front(self, ids: torch.Tensor, live: torch.Tensor) -> tuple:
        self._frozen_guard()
        ids, valid = ids[:, None], live[:, None]
        return self.model.encode_step(ids, self._starts_next(ids, valid), self.cache, valid)

    def _back_draft(self, *state) -> torch.Tensor:  # no patch waits: no global model
        self._frozen_guard()
        return self.model.finish_step(state, self.cache, 0)[:, 0]

    def _back_global(self, *state) -> torch.Tensor:
        self._frozen_guard()
        return self.model.finish_step(state, self.cache, 1)[:, 0]

    def _graph_step(self, ids: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """Replay a CUDA graph of the static step, captured at the first step (after a warm-up
        step on a side stream, which CUDA-graph capture needs; it also feeds the first byte)."""
        if self._graph is None:
            self._ids, self._live = ids.clone(), live.clone()
            s = torch.cuda.Stream(self.device)
            s.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(s):
                out = self._step_eager(self._ids, self._live)  # the real first step
            torch.cuda.current_stream(self.device).wait_stream(s)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):  # records the kernels, runs none of them
                self._out = self._step_eager(self._ids, self._live)
            return out
        self._ids.copy_(ids)
        self._live.copy_(live)
        self._graph.replay()
        return self._out.clone()

    def snapshot(self) -> dict:
        """The counters a step moves (every buffer is position-addressed and needs no undo)."""
        return {"model": self.cache.snapshot(), "em": self.ecache.snapshot() if self.ecache is not None else None,
                "bounds": self.bounds.snapshot() if self.bounds is not None else None}

    def restore(self, snap: dict) -> None:
        self.cache.restore(snap["model"])
        if snap["em"] is not None:
            self.ecache.restore(snap["em"])
        if snap["bounds"] is not None:
            self.bounds.restore(snap["bounds"])


__all__ = ["CachedStepper", "pad_prompts"]
