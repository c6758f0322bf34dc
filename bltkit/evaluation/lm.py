"""A bundle as an lm-evaluation-harness model: ``BltkitLM``, registered as ``bltkit``.

Importing this module registers the class in the harness's model registry
(``lm_eval.api.registry.register_model("bltkit")``), so ``lm_eval.simple_evaluate(model="bltkit",
model_args={"pretrained": BUNDLE})`` finds it. The harness (0.4.13) looks models up in that
registry only, filled by its own module table and by ``register_model`` calls; it reads no entry
points and takes no import path for ``--model``. Its command line therefore knows ``bltkit``
once this module is imported: ``python -m bltkit.evaluation`` is the harness's own command with
it imported (``bltkit/evaluation/__main__.py``).

The harness's tokens are bytes here: requests are strings, scored as their UTF-8 bytes after
BOS, and ``max_gen_toks`` counts bytes.

- ``loglikelihood(context, continuation)``: the sum of ln p of the continuation's bytes given
  BOS + context, and whether each of them is the argmax of its distribution (``is_greedy``). The
  whole string is one row, so a BLT patches context and continuation together, as generation
  does; a string longer than the window is scored in windows (``bltkit.inference.scoring``).
- ``loglikelihood_rolling(text)``: ln p of all the text's bytes after BOS, the negative of
  ``Handle.score(text)``'s nats (windowed beyond the window).
- ``generate_until(context, gen_kwargs)``: ``Handle.generate`` (cached) with ``until`` as its
  stop strings and ``max_gen_toks`` new bytes at most (default ``max_gen_bytes``); greedy unless
  ``do_sample``. A prompt that with them passes ``max_context`` keeps its last bytes.

Batching: loglikelihood requests go through ``score_spans``: rows sorted by length, identical
rows and rows that are a prefix of another (several continuations of one context that share
their first bytes) read once. Generation requests with the same settings go ``batch_size`` at a
time, longest prompt first. Results come back in the requests' order.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from ..data.vocab import to_bytes
from ..inference.api import DEFAULT_MAX_CONTEXT, Handle, load
from ..inference.scoring import check_batch_size, resolve_window, score_spans

DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_GEN_BYTES = 256
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p", "seed")


def _int_arg(value, name: str, default: Optional[int]) -> Optional[int]:
    """An integer model argument; the harness passes command-line ones as str or int."""
    if value is None or value == "auto":
        return default
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"bltkit model argument {name} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or out != float(value):
        raise ValueError(f"bltkit model argument {name} must be an integer, got {value!r}")
    return out


@register_model("bltkit")
class BltkitLM(LM):
    """``pretrained``: a bundle directory (or a loaded ``Handle``). ``device``/``dtype`` as
    ``bltkit.load`` (CUDA + bf16 when present); ``batch_size`` rows a forward; ``window`` /
    ``overlap`` the scoring windows; ``max_context`` the handle's limit; ``max_gen_bytes`` the
    default for requests without ``max_gen_toks``."""

    def __init__(self, pretrained: "str | os.PathLike | Handle | None" = None, device: Optional[str] = None,
                 dtype: Optional[str] = None, batch_size: Any = None, max_batch_size: Any = None,
                 window: Any = None, overlap: Any = None, max_context: Any = None,
                 max_gen_bytes: Any = DEFAULT_MAX_GEN_BYTES, progress: bool = True, **unknown):
        super().__init__()
        if unknown:
            raise ValueError(f"unknown bltkit model arguments {sorted(unknown)}; known: pretrained, device, dtype, "
                             "batch_size, window, overlap, max_context, max_gen_bytes")
        if pretrained is None:
            raise ValueError("the bltkit model needs pretrained=BUNDLE_DIR (a bundle directory)")
        if isinstance(pretrained, Handle):
            self.handle = pretrained
        else:
            ctx = _int_arg(max_context, "max_context", DEFAULT_MAX_CONTEXT)
            self.handle = load(pretrained, device=device, dtype=dtype, max_context=ctx)
        self.batch_size = _int_arg(batch_size, "batch_size", DEFAULT_BATCH_SIZE)
        check_batch_size(self.batch_size)
        self.window, self.overlap = resolve_window(self.handle, _int_arg(window, "window", None),
                                                   _int_arg(overlap, "overlap", None))
        self.max_gen_bytes = _int_arg(max_gen_bytes, "max_gen_bytes", DEFAULT_MAX_GEN_BYTES)
        self.progress = progress
        self._device = self.handle.device

    # ---- scoring --------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        texts, firsts = [], []
        for i, req in enumerate(requests):
            context, continuation = req.args[:2]
            ctx, cont = to_bytes(context), to_bytes(continuation)
            if not cont:
                raise ValueError(f"loglikelihood request {i}: the continuation is empty "
                                 f"(context ends {context[-40:]!r}); there is no byte to score")
            texts.append(ctx + cont)
            firsts.append(len(ctx))
        scores = self._score(texts, firsts, disable_tqdm, "loglikelihood")
        out = [(-s.total_nats, s.is_greedy) for s in scores]
        for req, o in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", req.args, o)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        texts = []
        for i, req in enumerate(requests):
            text = to_bytes(req.args[0])
            if not text:
                raise ValueError(f"loglikelihood_rolling request {i}: the text is empty; there is no byte to score")
            texts.append(text)
        out = [-s.total_nats for s in self._score(texts, None, disable_tqdm, "loglikelihood_rolling")]
        for req, o in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, o)
        return out

    def _score(self, texts, firsts, disable_tqdm: bool, desc: str):
        return score_spans(self.handle, texts, firsts, window=self.window, overlap=self.overlap,
                           batch_size=self.batch_size, progress=self.progress and not disable_tqdm, desc=desc)

    # ---- generation -----------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[tuple, list[tuple[int, bytes]]] = {}
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args[:2]
            settings = self._gen_settings(i, gen_kwargs)
            groups.setdefault(settings, []).append((i, to_bytes(context)))
        out: list[Optional[str]] = [None] * len(requests)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(requests), desc="generate_until", disable=not self.progress or disable_tqdm)
        for (until, max_new, temperature, top_k, top_p, seed), items in groups.items():
            keep = self.handle.max_context - 1 - max_new  # prompt bytes that fit beside BOS and the new bytes
            if keep < 0:
                raise ValueError(f"max_gen_toks {max_new} leaves no room for a prompt in max_context "
                                 f"{self.handle.max_context}")
            items = sorted(items, key=lambda it: -len(it[1]))
            for at in range(0, len(items), self.batch_size):
                batch = items[at:at + self.batch_size]
                prompts = [p[len(p) - keep:] if len(p) > keep else p for _, p in batch]
                texts = self.handle.generate(prompts, max_new_bytes=max_new, temperature=temperature, top_k=top_k,
                                             top_p=top_p, stop=list(until) or None, seed=seed)
                for (i, _), text in zip(batch, texts):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(batch))
        bar.close()
        return out

    def _gen_settings(self, i: int, gen_kwargs) -> tuple:
        kw = dict(gen_kwargs or {})
        unknown = sorted(set(kw) - set(GEN_KWARGS))
        if unknown:
            raise ValueError(f"generate_until request {i}: unknown generation arguments {unknown}; known: {list(GEN_KWARGS)}")
        until = kw.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        if any(not isinstance(u, str) or not u for u in until):
            raise ValueError(f"generate_until request {i}: stop strings must be non-empty strings, got {until!r}")
        max_new = _int_arg(kw.get("max_gen_toks"), "max_gen_toks", self.max_gen_bytes)
        # Greedy unless asked to sample: do_sample, or a positive temperature without do_sample.
        do_sample = kw.get("do_sample")
        temperature = 0.0 if do_sample is False else float(kw.get("temperature", 1.0 if do_sample else 0.0) or 0.0)
        return (tuple(until), max_new, temperature, kw.get("top_k"), kw.get("top_p"), int(kw.get("seed") or 0))


__all__ = ["BltkitLM"]
