"""The building blocks' fast forms against their plain arithmetic: RoPE's complex product against
the real rotation (eager, compiled, backward), RMSNorm's one-call form against its formula,
SwiGLU's in-place inference path against its training path."""
import warnings

import pytest
import torch

from bltkit.nn.norm import RMSNorm
from bltkit.nn.rope import _rotate_real, apply_rope, rope_angles


def _angles(t, d, rows=None):
    pos = torch.arange(t) if rows is None else torch.stack([torch.arange(t) + 7 * r for r in range(rows)])
    return rope_angles(pos * 3 + 1, d, 10000.0)


@pytest.mark.parametrize("shape", [(2, 4, 33, 16), (1, 8, 5, 64), (3, 2, 1, 8)])
@pytest.mark.parametrize("per_row", [False, True])
def test_rope_complex_is_the_real_rotation(shape, per_row):
    torch.manual_seed(0)
    b, h, t, d = shape
    x = torch.randn(shape) * 5
    cos, sin = _angles(t, d, b if per_row else None)
    got = apply_rope(x, cos, sin)
    c, s = (cos[:, None], sin[:, None]) if per_row else (cos, sin)
    want = _rotate_real(x.unflatten(-1, (-1, 2)), c, s)
    assert got.dtype == x.dtype and got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # an FMA's rounding, no more
    # a rotation keeps each pair's length and is not the identity
    assert torch.allclose(got.unflatten(-1, (-1, 2)).norm(dim=-1), x.unflatten(-1, (-1, 2)).norm(dim=-1), atol=1e-4)
    assert not torch.allclose(got, x)


def test_rope_of_strided_and_offset_views():
    """Heads split off a (B, T, H*hd) projection are a strided view; a slice may start at an odd offset."""
    torch.manual_seed(1)
    proj = torch.randn(2, 9, 4 * 16)
    q = proj.view(2, 9, 4, 16).transpose(1, 2)  # (B, H, T, hd), not contiguous
    cos, sin = _angles(9, 16)
    assert torch.equal(apply_rope(q, cos, sin), apply_rope(q.contiguous(), cos, sin))
    flat = torch.randn(1 + 2 * 4 * 9 * 16)
    odd = flat[1:].view(2, 4, 9, 16)  # storage offset 1: no complex view of it exists
    assert odd.storage_offset() % 2 == 1
    assert torch.equal(apply_rope(odd, cos, sin), apply_rope(odd.clone(), cos, sin))


def test_rope_bf16_and_backward_match_the_real_form():
    torch.manual_seed(2)
    x = torch.randn(2, 4, 17, 16)
    cos, sin = _angles(17, 16)
    xb = x.bfloat16()
    assert apply_rope(xb, cos, sin).dtype == torch.bfloat16
    want = _rotate_real(xb.float().unflatten(-1, (-1, 2)), cos, sin).bfloat16()
    assert torch.equal(apply_rope(xb, cos, sin), want)  # rotated in fp32, then rounded alike
    a = x.clone().requires_grad_()
    r = x.clone().requires_grad_()
    g = torch.randn_like(x)
    (apply_rope(a, cos, sin) * g).sum().backward()
    (_rotate_real(r.unflatten(-1, (-1, 2)), cos, sin) * g).sum().backward()
    torch.testing.assert_close(a.grad, r.grad, rtol=0, atol=1e-6)


def test_rope_compiled_takes_the_real_form_and_agrees():
    torch.manual_seed(3)
    x = torch.randn(1, 4, 12, 16)
    cos, sin = _angles(12, 16)
    compiled = torch.compile(apply_rope, fullgraph=True, dynamic=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        got = compiled(x, cos, sin)
    torch.testing.assert_close(got, apply_rope(x, cos, sin), rtol=0, atol=1e-6)
    # inductor warns when it meets a complex operator it cannot generate code for
    assert not [w for w in seen if "complex" in str(w.message)], [str(w.message) for w in seen]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_rmsnorm_matches_its_formula(dtype):
    torch.manual_seed(4)
    norm = RMSNorm(24, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(24) + 0.5)
    x = (torch.randn(3, 5, 24) * 3).to(dtype)
    xf = x.to(torch.promote_types(dtype, torch.float32))
    want = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype) * norm.weight
    got = norm(x)
    assert got.dtype == want.dtype
    assert torch.equal(got, want)


@pytest.mark.parametrize("amp", [False, True])
def test_swiglu_inference_path_equals_the_training_path(amp):
    """Without grad the gate's products run in place; the values are the same, and with grad the
    out-of-place path keeps what backward needs."""
    from bltkit.nn.ffn import SwiGLU

    torch.manual_seed(5)
    ffn = SwiGLU(32, 96)
    x = torch.randn(2, 7, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        with torch.no_grad():
            fast = ffn(x)
        xg = x.clone().requires_grad_()
        slow = ffn(xg)
    want = ffn.w2(torch.nn.functional.silu(ffn.w1(x)) * ffn.w3(x)) if not amp else slow.detach()
    assert torch.equal(fast, slow.detach()) and torch.equal(fast, want)
    slow.float().sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
