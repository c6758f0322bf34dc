"""The Python API: ``bltkit.load(DIR)`` -> a handle that generates, streams, scores and patches.

    import bltkit
    lm = bltkit.load("runs/tiny")                     # a bundle (a training run's output is one)
    lm.generate("The cat", max_new_bytes=64)          # -> str
    lm.generate(["a", "longer prompt"], temperature=0.8, top_p=0.9, seed=1)  # -> [str, str]
    for piece in lm.stream("Once upon"): print(piece, end="")
    lm.score("some text").bits_per_byte
    lm.patch("some text").pieces                      # patches as bytes, with entropies
    lm.save("somewhere")                              # writes a bundle

A bundle (``bltkit.bundle``) holds the model, the entropy model when patching needs it, and the
patcher settings, resolved as every entry point resolves them (``bltkit.patching.resolve_patcher``:
the entropy model's calibrated ``patcher.yaml`` under ``bundle.yaml``'s ``patcher``). Loading reads
YAML and safetensors only.

Device and dtype (``bltkit.runtime``): CUDA with bf16 weights when a GPU is present, else CPU
with fp32; both can be given, and a device this machine lacks is a one-line error. Generation uses every cache by default (``use_cache=False`` reruns the patcher and the
model on the whole prefix every byte, as the reference does: docs/reference-semantics.md §14).

Context: a BLT has no position table, so the limit is a choice: ``max_context`` bytes (BOS +
prompt + new bytes, default 16384) bound the caches. A longer request is an error naming the
lengths; prompts are never truncated silently.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import nn

from ..bundle import ENTROPY_SUBDIR, BUNDLE_FILE, bundle_patcher, load_bundle_models, save_bundle
from ..data.vocab import encode, to_bytes
from ..patching.config import PatcherConfig
from ..runtime import resolve_device, resolve_dtype
from .generate import Generation, collect, stream_text
from .recompute import RecomputeStepper
from .sampling import SamplingParams, check_seed
from .scoring import LN2, forward_rows, gather_targets
from .speculative import SpeculativeStepper, check_draft_length
from .stepper import TUNED, CachedStepper

DEFAULT_MAX_CONTEXT = 16384
Prompt = Union[str, bytes, bytearray]


@dataclass
class Score:
    bits_per_byte: float
    surprisal: list[float]  # bits, one a scored byte (EOS included when scored)
    bytes: bytes
    patch_lengths: Optional[list[int]] = None


@dataclass
class Patches:
    pieces: list[bytes]  # the patches' bytes; a BLT's first is the BOS patch (b""), an H-Net's opens at BOS
    lengths: list[int]
    entropies: Optional[list[float]]  # H after each id (BOS first), nats; None without an entropy model
    boundary_probs: Optional[list[float]] = None  # an H-Net's p of each id (BOS first): a chunk opens where p > 0.5


def load(path: str | os.PathLike, device=None, dtype=None, max_context: int = DEFAULT_MAX_CONTEXT) -> "Handle":
    """A handle on the bundle in ``path`` (see the module docstring)."""
    d = Path(path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev, what="dtype")
    meta, model, em = load_bundle_models(d, device=dev, dtype=dt)
    patcher = None
    if meta.kind == "blt":
        if meta.patcher is None:
            raise ValueError(f"{d / BUNDLE_FILE} has no patcher settings: a BLT needs its patching scheme")
        patcher = bundle_patcher(d)
    return Handle(model, patcher=patcher, entropy_model=em, kind=meta.kind, device=dev, max_context=max_context)


class Handle:
    """A loaded model with its patcher: ``generate``, ``stream``, ``score``, ``patch``, ``save``."""

    def __init__(self, model: nn.Module, patcher: Optional[PatcherConfig] = None, entropy_model: Optional[nn.Module] = None,
                 kind: str = "blt", device=None, max_context: int = DEFAULT_MAX_CONTEXT):
        if kind == "blt" and patcher is None:
            raise ValueError("a BLT handle needs patcher settings (PatcherConfig)")
        if not isinstance(max_context, int) or max_context < 2:
            raise ValueError(f"max_context must be an integer >= 2 bytes, got {max_context!r}")
        self.model = model.eval().requires_grad_(False)
        self.entropy_model = entropy_model.eval().requires_grad_(False) if entropy_model is not None else None
        self.patcher = patcher.filled() if patcher is not None else None
        self.kind, self.max_context = kind, max_context
        self.device = torch.device(device) if device is not None else next(model.parameters()).device

    @property
    def learns_boundaries(self) -> bool:
        """Whether the model places its own boundaries (an H-Net; a BLT with ``scheme: learned``):
        it steps itself, with no patcher outside it, and ``patch`` shows what its router chose."""
        return self.kind == "hnet" or (self.patcher is not None and self.patcher.learned)

    @property
    def external_patcher(self) -> Optional[PatcherConfig]:
        """The patcher settings the steppers apply outside the model (None when it has none)."""
        return self.patcher if self.kind == "blt" and not self.learns_boundaries else None

    def __repr__(self) -> str:
        scheme = self.patcher.scheme if self.patcher else "-"
        return f"Handle(kind={self.kind!r}, patcher={scheme!r}, device={str(self.device)!r})"

    # ---- generation -----------------------------------------------------------------------------
    def generate(self, prompt: Union[Prompt, Sequence[Prompt]], max_new_bytes: int = 256, temperature: float = 0.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 stop: Union[None, Prompt, Sequence[Prompt]] = None, seed: Union[int, Sequence[int]] = 0,
                 return_bytes: bool = False, details: bool = False, use_cache: bool = True,
                 speculative: Union[bool, int] = False, compile: Union[bool, str] = False):
        """Continue ``prompt`` (one, or a list: a batch of any lengths).

        Returns the new text (``str``), or ``bytes`` with ``return_bytes``, or a ``Generation``
        (text, bytes, stop_reason, ...) with ``details``; a list for a list of prompts. Stops at
        EOS, at any ``stop`` string (cut from the output) or after ``max_new_bytes``.
        ``temperature`` 0 is greedy; ``seed`` (one, or one a prompt) drives sampling; a prompt's
        result does not depend on the batch it is in.

        ``speculative`` (True, or a draft length in bytes): self-speculative decoding (BLT-S,
        ``speculative.py``), greedy BLT only, the same bytes as without it; with ``compile`` the
        drafted bytes go through the compiled step's graphs. ``compile``: the
        one-byte step compiled whole with ``torch.compile`` (the first call pays the compilation);
        ``"max-autotune"``: its matrix products autotuned against the weights frozen into the
        graph (minutes to tune; about 2x a bench-S byte on a CPU, docs/benchmarks.md), for a model
        whose weights no longer change.
        """
        _check_compile(compile)
        single = not isinstance(prompt, (list, tuple))
        prompts = self._prompts([prompt] if single else list(prompt), max_new_bytes)
        params = self._params(temperature, top_k, top_p)
        seeds = self._seeds(seed, len(prompts))
        stepper = self._stepper(use_cache, prompts, max_new_bytes, params, speculative, compile)
        gens = collect(stepper, prompts, max_new_bytes, params, seeds, _stops(stop))
        out = [g if details else (g.bytes if return_bytes else g.text) for g in gens]
        return out[0] if single else out

    def stream(self, prompt: Prompt, max_new_bytes: int = 256, temperature: float = 0.0, top_k: Optional[int] = None,
               top_p: Optional[float] = None, stop: Union[None, Prompt, Sequence[Prompt]] = None, seed: int = 0,
               use_cache: bool = True, speculative: Union[bool, int] = False, compile: Union[bool, str] = False) -> Iterator[str]:
        """Text pieces as bytes are generated; no piece splits a UTF-8 character, and the pieces
        joined equal ``generate``'s text for the same arguments."""
        if isinstance(prompt, (list, tuple)):
            raise ValueError("stream takes one prompt; use generate for a batch")
        _check_compile(compile)
        prompts = self._prompts([prompt], max_new_bytes)
        params = self._params(temperature, top_k, top_p)
        (s,) = self._seeds(seed, 1)
        stepper = self._stepper(use_cache, prompts, max_new_bytes, params, speculative, compile)
        return stream_text(stepper, prompts[0], max_new_bytes, params, s, _stops(stop))

    def _stepper(self, use_cache: bool, prompts: list[list[int]], max_new_bytes: int,
                 params: Optional[SamplingParams] = None, speculative: Union[bool, int] = False, compile: Union[bool, str] = False):
        max_bytes = max(len(p) for p in prompts) + max_new_bytes + 1
        patcher = self.external_patcher
        if speculative is not False:
            draft = check_draft_length(speculative)
            what = "a BLT with learned boundaries" if self.learns_boundaries and self.kind == "blt" \
                else f"a {self.kind!r} model"
            unsupported = [name for name, on in (("use_cache=False", not use_cache),
                                                 (f"{what} (BLTs with a patcher only)", patcher is None)) if on]
            if params is not None and not params.greedy:
                unsupported.append(f"temperature={params.temperature} (speculative decoding is greedy only)")
            if unsupported:
                raise ValueError(f"speculative={speculative!r} does not combine with {', '.join(unsupported)}")
            return SpeculativeStepper(self.model, patcher, self.entropy_model, max_bytes, self.device, draft,
                                      compile=compile)
        if not use_cache:
            if compile:
                raise ValueError("compile=True needs the cache (use_cache=True): the uncached loop changes shape every byte")
            return RecomputeStepper(self.model, patcher, self.entropy_model, self.device)
        return CachedStepper(self.model, patcher, self.entropy_model, max_bytes, self.device, compile=compile,
                             learned_patches=self.kind == "blt" and self.learns_boundaries)

    def _prompts(self, prompts: list, max_new_bytes: int) -> list[list[int]]:
        if isinstance(max_new_bytes, bool) or not isinstance(max_new_bytes, int) or max_new_bytes < 1:
            raise ValueError(f"max_new_bytes must be an integer >= 1, got {max_new_bytes!r}")
        if not prompts:
            raise ValueError("no prompt given (an empty list); use [''] to generate from BOS alone")
        out = []
        for i, p in enumerate(prompts):
            if not isinstance(p, (str, bytes, bytearray)):
                raise ValueError(f"prompt {i} must be str or bytes, got {type(p).__name__}")
            ids = encode(p, bos=True, eos=False)  # an empty prompt is BOS alone
            if len(ids) + max_new_bytes > self.max_context:
                raise ValueError(f"prompt {i} has {len(ids) - 1} bytes; with BOS and max_new_bytes {max_new_bytes} that is "
                                 f"{len(ids) + max_new_bytes} bytes, over max_context {self.max_context} "
                                 "(shorten the prompt, lower max_new_bytes, or load with a larger max_context)")
            out.append(ids)
        return out

    @staticmethod
    def _params(temperature, top_k, top_p) -> SamplingParams:
        p = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
        p.validate()
        return p

    @staticmethod
    def _seeds(seed, n: int) -> list[int]:
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * n
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} prompts")
        for s in seeds:  # checked even when greedy decoding never draws from them
            check_seed(s)
        return seeds

    # ---- scoring and patching -------------------------------------------------------------------
    @torch.no_grad()
    def score(self, text: Prompt, eos: bool = False) -> Score:
        """Bits per byte and per-byte surprisal (bits) of ``text`` after BOS (and of EOS with ``eos``)."""
        data = to_bytes(text)
        if not data and not eos:
            raise ValueError("nothing to score: the text is empty (pass eos=True to score EOS alone)")
        ids = encode(data, bos=True, eos=eos)
        if len(ids) > self.max_context:
            raise ValueError(f"text of {len(data)} bytes is over max_context {self.max_context}")
        logprobs, patches = forward_rows(self, [ids[:-1]])
        nats, _ = gather_targets(logprobs[0], ids[1:])
        bits = (nats / LN2).tolist()
        return Score(sum(bits) / len(bits), bits, data, patches[0] if patches else None)

    @torch.no_grad()
    def patch(self, text: Prompt) -> Patches:
        """How the patcher splits BOS + ``text`` (lengths sum to 1 + bytes), with entropies; for
        an H-Net or a BLT with learned boundaries, the chunks (patches) its router chose
        (docs/hnet.md, docs/patching.md), with each byte's probability."""
        if self.learns_boundaries:
            return self._chunks(text)
        if self.kind != "blt":
            raise ValueError(f"a {self.kind!r} bundle has no patcher")
        data = to_bytes(text)
        ids = torch.tensor([encode(data, bos=True, eos=False)], dtype=torch.int64)  # (1, N)
        res = self._patcher()(ids, include_next_token=False)
        lengths = res.rows()[0]
        pieces, at = [], 0
        for n in lengths:
            pieces.append(bytes(b - 4 for b in ids[0, at:at + n].tolist() if b >= 4))
            at += n
        ents = res.scores[0].tolist() if res.scores is not None else None
        return Patches(pieces, lengths, ents)

    def _chunks(self, text: Prompt) -> Patches:
        data = to_bytes(text)
        ids = encode(data, bos=True, eos=False)
        if len(ids) > self.max_context:
            raise ValueError(f"text of {len(data)} bytes is over max_context {self.max_context}")
        x = torch.tensor([ids], dtype=torch.int64, device=self.device)  # (1, N)
        routing = self.model(x, return_routing=True).routing
        starts = routing.boundary[0].nonzero()[:, 0].tolist() + [len(ids)]  # position 0 always opens one
        lengths = [b - a for a, b in zip(starts, starts[1:])]
        pieces = [bytes(v - 4 for v in ids[a:b] if v >= 4) for a, b in zip(starts, starts[1:])]
        return Patches(pieces, lengths, None, routing.prob[0].tolist())

    def _patcher(self):
        from ..patching.patcher import Patcher

        return Patcher(self.patcher, scorer=self.entropy_model if self.patcher.needs_scores else None, precision="fp32")

    # ---- persistence ----------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        """Write this handle as a bundle directory (model, entropy model, patcher settings)."""
        patcher = None
        if self.patcher is not None:
            patcher = self.patcher.for_bundle(ENTROPY_SUBDIR if self.entropy_model is not None else None)
        save_bundle(directory, self.model, self.kind, patcher=patcher, entropy_model=self.entropy_model)


def _check_compile(compile) -> None:
    if compile not in (False, True, TUNED) or not isinstance(compile, (bool, str)):
        raise ValueError(f"compile must be False, True or {TUNED!r}, got {compile!r}")


def _stops(stop) -> list[bytes]:
    if stop is None:
        return []
    items = [stop] if isinstance(stop, (str, bytes, bytearray)) else list(stop)
    out = []
    for s in items:
        if not isinstance(s, (str, bytes, bytearray)):
            raise ValueError(f"stop strings must be str or bytes, got {type(s).__name__}")
        b = to_bytes(s)
        if not b:
            raise ValueError("a stop string is empty")
        out.append(b)
    return out


__all__ = ["load", "Handle", "Score", "Patches", "Generation", "DEFAULT_MAX_CONTEXT"]
