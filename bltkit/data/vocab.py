"""The byte vocabulary: 260 ids, raw byte b is id b + 4 (docs/reference-semantics.md §2).

| id  | name | use                                                             |
|-----|------|-----------------------------------------------------------------|
| 0   | BOE  | padding value, hash left pad, global-token filler               |
| 1   | BOS  | start of every document                                         |
| 2   | EOS  | end of every document; attention resets after it                |
| 3   | -    | reserved (BPE delimiter in the reference, ``<pad>`` in HF)       |
| 4.. | byte | raw byte b has id b + 4                                         |

Bytes are bytes: text that is not valid UTF-8 encodes and decodes losslessly as ``bytes``.
"""
from __future__ import annotations

from typing import Iterable, Sequence, Union

import torch

BOE_ID = 0
BOS_ID = 1
EOS_ID = 2
RESERVED_ID = 3
OFFSET = 4
VOCAB_SIZE = 256 + OFFSET

TextLike = Union[str, bytes, bytearray]


def to_bytes(text: TextLike) -> bytes:
    """UTF-8 bytes of ``text``; ``bytes`` pass through unchanged."""
    if isinstance(text, str):
        return text.encode("utf-8", errors="surrogatepass")
    if isinstance(text, (bytes, bytearray)):
        return bytes(text)
    raise TypeError(f"expected str or bytes, got {type(text).__name__}")


def encode(text: TextLike, bos: bool = True, eos: bool = True) -> list[int]:
    """Ids of ``text``: optional BOS, byte + 4 for each byte, optional EOS."""
    ids = [b + OFFSET for b in to_bytes(text)]
    if bos:
        ids.insert(0, BOS_ID)
    if eos:
        ids.append(EOS_ID)
    return ids


def encode_tensor(text: TextLike, bos: bool = True, eos: bool = True) -> torch.Tensor:
    """``encode`` as a 1-D int64 tensor (vectorised: no Python loop over bytes)."""
    data = to_bytes(text)
    raw = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64) + OFFSET) if data \
        else torch.zeros(0, dtype=torch.int64)
    parts = []
    if bos:
        parts.append(torch.tensor([BOS_ID], dtype=torch.int64))
    parts.append(raw)
    if eos:
        parts.append(torch.tensor([EOS_ID], dtype=torch.int64))
    return torch.cat(parts)


def decode_bytes(ids: Iterable[int] | torch.Tensor, cut_at_eos: bool = False) -> bytes:
    """Raw bytes of ``ids``; special ids (< 4) are dropped. ``cut_at_eos`` stops at the first EOS."""
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    out = bytearray()
    for i in ids:
        i = int(i)
        if cut_at_eos and i == EOS_ID:
            break
        if i < 0 or i >= VOCAB_SIZE:
            raise ValueError(f"id {i} is outside the vocabulary 0..{VOCAB_SIZE - 1}")
        if i >= OFFSET:
            out.append(i - OFFSET)
    return bytes(out)


def decode(ids: Iterable[int] | torch.Tensor, cut_at_eos: bool = False, errors: str = "replace") -> str:
    """Text of ``ids`` (invalid UTF-8 replaced by U+FFFD unless ``errors`` says otherwise)."""
    return decode_bytes(ids, cut_at_eos=cut_at_eos).decode("utf-8", errors=errors)


def check_ids(ids: torch.Tensor, name: str = "ids") -> None:
    """Raise ``ValueError`` naming the first out-of-range id and its position."""
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"{name} must be an integer tensor, got {ids.dtype}")
    if ids.numel() == 0:
        return
    bad = (ids < 0) | (ids >= VOCAB_SIZE)
    if bool(bad.any()):
        pos = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} holds id {int(ids[pos])} at position {pos}, outside the vocabulary 0..{VOCAB_SIZE - 1}"
        )


def utf8_complete_prefix(buf: bytes) -> int:
    """Length of the longest prefix of ``buf`` that does not end inside a UTF-8 character.

    Streaming generation emits only this prefix, so a multi-byte character is never split.
    Invalid bytes count as complete (they can never become valid), so nothing is held forever.
    """
    n = len(buf)
    # Look back at most 3 bytes for the lead byte of an unfinished sequence.
    for back in range(1, min(4, n) + 1):
        b = buf[n - back]
        if b & 0b1100_0000 == 0b1000_0000:  # continuation byte: keep looking for the lead
            continue
        if b & 0b1000_0000 == 0:
            return n  # ASCII: complete
        need = 2 if b & 0b1110_0000 == 0b1100_0000 else 3 if b & 0b1111_0000 == 0b1110_0000 else 4 if b & 0b1111_1000 == 0b1111_0000 else 0
        if need == 0:
            return n  # invalid lead byte: nothing to wait for
        return n if back >= need else n - back
    return n


__all__ = [
    "BOE_ID", "BOS_ID", "EOS_ID", "RESERVED_ID", "OFFSET", "VOCAB_SIZE",
    "to_bytes", "encode", "encode_tensor", "decode", "decode_bytes", "check_ids", "utf8_complete_prefix",
]
