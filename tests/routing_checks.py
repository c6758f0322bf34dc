"""Checks shared by the two learned-boundary kinds' tests (tests/test_hnet.py, the H-Net; and
tests/test_learned_patches.py, the BLT with learned boundaries): random byte rows with EOS, causality
of boundaries and logits, and the float64 directional finite-difference check of the gradient into
the router."""
from typing import Callable, Sequence

import torch

from bltkit.data.vocab import EOS_ID


def random_ids(g: torch.Generator, b: int, n: int, eos_every: int = 90) -> torch.Tensor:
    """(b, n) random byte ids with an EOS about every ``eos_every`` bytes."""
    ids = torch.randint(4, 260, (b, n), generator=g)
    ids[torch.rand(b, n, generator=g) < 1 / eos_every] = EOS_ID
    return ids


def assert_later_bytes_never_change_earlier(model, seed: int, n: int, t: int) -> None:
    """Rewriting the bytes after position ``t`` of a random ``n``-byte row changes neither the
    boundaries nor the logits at positions ``0 .. t`` (``model(ids, return_routing=True)``)."""
    g = torch.Generator().manual_seed(seed)
    ids = random_ids(g, 1, n, eos_every=12)
    other = ids.clone()
    other[0, t + 1:] = random_ids(g, 1, n - t - 1, eos_every=12)
    with torch.no_grad():
        a, b = model(ids, return_routing=True), model(other, return_routing=True)
    assert torch.equal(a.routing.boundary[:, :t + 1], b.routing.boundary[:, :t + 1])
    torch.testing.assert_close(a.logits[:, :t + 1], b.logits[:, :t + 1], atol=1e-5, rtol=1e-5)


def directional_derivatives(objective: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                            weights: Sequence[torch.Tensor], seed: int = 6,
                            eps: float = 1e-6) -> tuple[float, float]:
    """(autograd, central finite difference) derivative of ``objective()[0]`` along one random
    direction of ``weights`` (float64). ``objective()`` returns (loss, boundaries); the check
    asserts that no boundary moves under the perturbation, so the loss is smooth there."""
    loss, bnd = objective()
    grads = torch.autograd.grad(loss, list(weights))
    g = torch.Generator().manual_seed(seed)
    dirs = [torch.randn(w.shape, generator=g, dtype=torch.float64) for w in weights]
    analytic = sum((gr * d).sum() for gr, d in zip(grads, dirs))
    vals = []
    with torch.no_grad():
        for sign in (1, -1):
            for w, d in zip(weights, dirs):
                w.add_(sign * eps * d)
            val, b = objective()
            assert torch.equal(b, bnd)  # no boundary moved: the loss is smooth here
            vals.append(val)
            for w, d in zip(weights, dirs):
                w.sub_(sign * eps * d)
    return float(analytic), float((vals[0] - vals[1]) / (2 * eps))
