"""Typed configuration of the demo (``configs/demo/*.yaml``), unknown keys rejected.

    compare: {budget: ..., base: ..., entropy: ..., variants: [...]}   # a CompareConfig, as is
    show:    {text: null, prompts: [...], max_new_bytes: 160, temperature: 0.7, top_k: 20, seed: 0}
    threads: 1                                                         # torch CPU threads (null: torch's choice)

``compare`` is exactly what ``bltkit compare`` reads (``bltkit.compare.config``): the demo runs
that comparison, so every knob of it (budget, model sizes, data, variants) is a knob of the demo.
The demo needs one BLT variant with entropy patches (its entropy model is shown patching a text,
the BLT generates); ``show`` says what to show. Shipped configs: ``cpu`` (the default, 3.5
minutes on an idle 2-core CPU, well under ten on a busy one), ``quick`` (a minute or two, what
the tests run) and ``gpu`` (larger sizes, picked automatically when a CUDA GPU is present).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .. import config as cfgio
from ..compare.config import CompareConfig

SHIPPED_DEFAULT = "cpu"
SHIPPED_QUICK = "quick"
SHIPPED_GPU = "gpu"


@dataclass
class ShowConfig:
    """What the demo shows once training is done."""

    text: Optional[str] = None  # the text patched and drawn; None: the start of the first held-out document
    text_bytes: int = 160  # how much of a held-out document to show when ``text`` is None
    prompts: list[str] = field(default_factory=list)  # generation prompts; empty: starts of held-out documents
    prompt_bytes: int = 24  # bytes of a held-out document taken as a prompt when ``prompts`` is empty
    n_prompts: int = 2  # prompts taken from held-out documents when ``prompts`` is empty
    max_new_bytes: int = 160
    temperature: float = 0.7  # 0 = greedy
    top_k: Optional[int] = 20
    seed: int = 0

    def validate(self) -> None:
        if self.text is not None and not self.text.strip():
            raise ValueError("show.text is empty: give some text or null (a held-out document)")
        if self.text_bytes < 8 or self.prompt_bytes < 1 or self.n_prompts < 1:
            raise ValueError(f"show.text_bytes {self.text_bytes} (>= 8), prompt_bytes {self.prompt_bytes} (>= 1) "
                             f"and n_prompts {self.n_prompts} (>= 1) out of range")
        if self.max_new_bytes < 1:
            raise ValueError(f"show.max_new_bytes must be >= 1, got {self.max_new_bytes}")
        if self.temperature < 0:
            raise ValueError(f"show.temperature must be >= 0 (0 = greedy), got {self.temperature}")


@dataclass
class DemoConfig:
    compare: CompareConfig = field(default_factory=CompareConfig)
    show: ShowConfig = field(default_factory=ShowConfig)
    # CPU threads for torch (None: torch's choice). The demo's models are small enough that a
    # second thread gains little on CPU, while on a machine shared with other jobs two threads
    # a process can run several times slower than one (the threads spin waiting for each other).
    threads: Optional[int] = None

    def validate(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or null, got {self.threads}")
        self.entropy_variant()  # fails early when there is no BLT with entropy patches

    def entropy_variant(self) -> str:
        """Name of the BLT variant patched by the entropy model (the one the demo shows)."""
        for v in self.compare.variants:
            if v.kind == "blt" and v.patcher is not None and v.patcher.scheme == "entropy":
                return v.name
        raise ValueError("the demo needs a BLT variant with entropy patches "
                         "({kind: blt, patcher: {scheme: entropy}}) among compare.variants; it has "
                         f"{[v.name for v in self.compare.variants]}")


def shipped_name(quick: bool, cuda: bool) -> str:
    """The shipped config for the machine: ``quick`` when asked, else ``gpu`` on CUDA, else ``cpu``."""
    if quick:
        return SHIPPED_QUICK
    return SHIPPED_GPU if cuda else SHIPPED_DEFAULT


def load_demo_config(name_or_path: str | os.PathLike, overrides: Optional[list[str]] = None) -> tuple[DemoConfig, Path]:
    """(config, its file) from a YAML path or a shipped name under ``configs/demo/``; ``overrides``
    are ``key.sub=value`` strings (``compare.budget.value=2e12``)."""
    data, p = cfgio.read_config(name_or_path, "demo", overrides)
    return cfgio.from_dict(DemoConfig, data, source=str(p)), p
