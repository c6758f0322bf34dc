"""The patch-level loss (docs/fixed-k.md "The method"; arXiv 2407.12665): a bag of K next-patch targets, one softmax.

With logits ``z_i`` at patch position i and targets ``x_{(i+1)K+k}`` (k < K) the paper's loss is
``-(1/K) sum_k log softmax(z_i)[x_{(i+1)K+k}]``, averaged over positions. Here it is returned as
(sum of nats over every real target byte, number of real target bytes), the trainer's form
(``bltkit.training.task``): the loop divides one by the other, which is exactly the mean over
positions of the average over K (and the mean over real targets when padding masks some out).
K = 1 is ordinary next-byte cross-entropy (docs/reference-semantics.md §12.1): the same numbers as
``training.task.masked_nats``.

Axes: B rows, T patch positions, K bytes a patch, V vocabulary.
"""
from __future__ import annotations

import torch


def patch_nats(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, T, V); targets, mask (B, T*K): the K bytes of patch i+1 at ``[i*K:(i+1)*K]``."""
    b, t, v = logits.shape
    if targets.shape != mask.shape or targets.shape[0] != b or targets.shape[1] % t:
        raise ValueError(f"targets {tuple(targets.shape)} / mask {tuple(mask.shape)} do not fit logits "
                         f"{tuple(logits.shape)}: targets must be (B, T*K)")
    k = targets.shape[1] // t
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    picked = logp.gather(-1, targets.view(b, t, k))  # (B, T, K): the same softmax scores all K
    m = mask.view(b, t, k).to(picked.dtype)
    return -(picked * m).sum(), m.sum()
