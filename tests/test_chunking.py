"""The dynamic-chunking primitives (bltkit.nn.chunking) against hand-computed values (docs/hnet.md)."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from bltkit.nn.chunking import (
    EMA_CLAMP, ResidualProjection, RoutingModule, chunk_index, combine, confidence, downsample, ema_reference,
    ema_scan, is_boundary, ratio_loss, ste_one, upsample,
)

R2 = math.sqrt(2.0)


def _states():
    # Adjacent pairs: e1->e2 (cos 0), e2->e2 (1), e2->-e2 (-1), -e2->(1,1) (-1/sqrt2), (1,1)->(2,0) (1/sqrt2).
    return torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, -1.0], [1.0, 1.0], [2.0, 0.0]]])


def test_router_probabilities_first_position_and_strict_threshold():
    r = RoutingModule(2)
    assert torch.equal(r.q_proj.weight, torch.eye(2)) and torch.equal(r.k_proj.weight, torch.eye(2))
    out = r(_states())
    want = torch.tensor([[1.0, 0.5, 0.0, 1.0, (1 + 1 / R2) / 2, (1 - 1 / R2) / 2]])
    torch.testing.assert_close(out.prob, want, atol=1e-6, rtol=0)
    # p_0 = 1 opens the first chunk; p = 0.5 exactly is no boundary (strict).
    assert out.prob[0, 1].item() == 0.5
    assert out.boundary.tolist() == [[True, False, False, True, True, False]]
    torch.testing.assert_close(out.confidence, torch.tensor([[1.0, 0.5, 1.0, 1.0, want[0, 4], 1 - want[0, 5]]]),
                               atol=1e-6, rtol=0)


def test_router_forced_starts_prev_state_and_padding():
    r = RoutingModule(2)
    h = _states()
    starts = torch.zeros(1, 6, dtype=torch.bool)
    starts[0, 2] = True
    out = r(h, starts=starts)
    assert out.prob[0, 2].item() == 1.0 and out.boundary[0, 2]
    # A continued sequence: position 0 is scored against the previous state, not forced.
    cont = r(h[:, 1:], prev=h[:, 0])
    torch.testing.assert_close(cont.prob, r(h).prob[:, 1:])
    valid = torch.tensor([[True, True, True, True, False, False]])
    assert r(h, valid=valid).boundary.tolist() == [[True, False, False, True, False, False]]


def test_router_query_projection_reads_the_earlier_state():
    r = RoutingModule(2)
    with torch.no_grad():
        r.q_proj.weight.copy_(torch.tensor([[0.0, -1.0], [1.0, 0.0]]))  # rotate by +90 degrees
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # W_q e1 = e2 = W_k e2 -> cos 1 -> p 0; the swapped reading (W_q e2 = -e1 vs e1) would give 1.
    assert r(h).prob[0, 1].item() == pytest.approx(0.0, abs=1e-7)


def test_router_runs_in_fp32_under_autocast():
    torch.manual_seed(1)
    r = RoutingModule(16)
    with torch.no_grad():
        r.q_proj.weight.add_(0.1 * torch.randn(16, 16))
    h = torch.randn(2, 9, 16)
    plain = r(h)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = r(h)
    assert amp.prob.dtype == torch.float32
    assert torch.equal(amp.prob, plain.prob)
    assert is_boundary(torch.tensor([0.5, 0.5000001, 0.4999])).tolist() == [False, True, False]


def test_downsample_upsample_by_hand():
    h = torch.arange(10, dtype=torch.float32).view(1, 5, 2)  # position t holds (2t, 2t+1)
    b = torch.tensor([[True, False, True, True, False]])
    assert chunk_index(b).tolist() == [[0, 0, 1, 2, 2]]
    c = downsample(h, b, max_chunks=5)
    assert c.start.tolist() == [[0, 2, 3, 0, 0]] and c.mask.tolist() == [[True, True, True, False, False]]
    assert c.counts.tolist() == [3]
    assert c.states[0, :3].tolist() == [[0.0, 1.0], [4.0, 5.0], [6.0, 7.0]]
    assert downsample(h, b).states.shape == (1, 3, 2)  # M = the largest count
    assert c.select(torch.tensor([[9.0, 8.0, 7.0, 6.0, 5.0]]))[0, :3].tolist() == [9.0, 7.0, 6.0]
    z = torch.tensor([[[10.0], [20.0], [30.0]]])
    assert upsample(z, b)[0, :, 0].tolist() == [10.0, 10.0, 20.0, 30.0, 30.0]
    # A continued row: positions before its first boundary read the carried chunk.
    b2 = torch.tensor([[False, True, False]])
    assert upsample(z[:, :1], b2, initial=torch.tensor([[7.0]]))[0, :, 0].tolist() == [7.0, 10.0, 10.0]


def test_ema_recurrence_by_hand():
    z = torch.tensor([[[2.0], [4.0], [8.0]]])
    p = torch.tensor([[1.0, 0.6, 0.8]])
    # P_0 = 1 - 1e-4 (the clamp), z̄_{-1} = 0.
    z0 = (1 - EMA_CLAMP) * 2.0
    z1 = 0.6 * 4.0 + 0.4 * z0
    z2 = 0.8 * 8.0 + 0.2 * z1
    for f in (ema_scan, ema_reference):
        torch.testing.assert_close(f(z, p)[0, :, 0], torch.tensor([z0, z1, z2]), atol=1e-6, rtol=0)
        # A reset drops the carried state exactly; an initial state replaces z̄_{-1} = 0.
        r = torch.tensor([[False, False, True]])
        assert f(z, p, reset=r)[0, 2, 0].item() == pytest.approx(0.8 * 8.0, abs=1e-6)
        got = f(z[:, 1:], p[:, 1:], initial=torch.tensor([[10.0]]))[0, 0, 0].item()
        assert got == pytest.approx(0.6 * 4.0 + 0.4 * 10.0, abs=1e-6)
        # p = 0 is clamped to 1e-4: the state barely moves.
        assert f(z[:, :1], torch.zeros(1, 1), initial=torch.tensor([[1.0]]))[0, 0, 0].item() == pytest.approx(
            1e-4 * 2.0 + (1 - 1e-4) * 1.0, abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 40), seed=st.integers(0, 10_000))
def test_ema_scan_matches_the_loop(m, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, m, 3, generator=g)
    p = torch.rand(2, m, generator=g)
    reset = torch.rand(2, m, generator=g) < 0.2
    init = torch.randn(2, 3, generator=g)
    torch.testing.assert_close(ema_scan(z, p, reset, init), ema_reference(z, p, reset, init), atol=1e-5, rtol=1e-5)


def test_ste_forward_is_exactly_one_and_passes_the_gradient():
    torch.manual_seed(0)
    c = (0.5 + 0.5 * torch.rand(2, 7)).requires_grad_()
    assert torch.equal(ste_one(c), torch.ones(2, 7))
    z = torch.randn(2, 7, 5, requires_grad=True)
    r = torch.randn(2, 7, 5, requires_grad=True)
    y = combine(z, c, r)
    assert torch.equal(y, z + r)  # the forward multiplies the dechunked path by exactly 1
    g = torch.randn(2, 7, 5)
    (y * g).sum().backward()
    torch.testing.assert_close(c.grad, (g * z).sum(-1))  # dL/dc_t = <dL/dy_t, z̃_t>
    torch.testing.assert_close(z.grad, g)  # unscaled
    torch.testing.assert_close(r.grad, g)  # the residual is not multiplied
    p = torch.tensor([0.7, 0.2])
    assert confidence(p, is_boundary(p)).tolist() == pytest.approx([0.7, 0.8])


def test_residual_projection_zero_weight_fp32():
    res = ResidualProjection(8)
    assert torch.count_nonzero(res.proj.weight) == 0
    assert torch.count_nonzero(res.proj.bias) > 0  # PyTorch's default bias init
    x = torch.randn(2, 3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = res(x.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, res.proj.bias.expand(2, 3, 8))


def test_ratio_loss_formula():
    n = 4.0
    b = torch.tensor([True, False, False, False] * 3)
    assert ratio_loss(b, b.float(), n).item() == pytest.approx(1.0, abs=1e-7)  # F = G = 1/N
    b2 = torch.tensor([True, False] * 5)  # F = 0.5
    p = torch.full((10,), 0.3)  # G = 0.3
    assert ratio_loss(b2, p, n).item() == pytest.approx(4 / 3 * (3 * 0.5 * 0.3 + 0.5 * 0.7), abs=1e-6)
    assert ratio_loss(b2, torch.full((10,), 0.05), n).item() < 1.0  # below 1 when F != G


@pytest.mark.parametrize("f_ones, sign", [(1, -1.0), (3, 1.0)])  # F = 1/8 < 1/4, F = 3/8 > 1/4
def test_ratio_loss_gradient(f_ones, sign):
    n = 4.0
    b = torch.zeros(8, dtype=torch.bool)
    b[:f_ones] = True
    p = torch.full((8,), 0.4, requires_grad=True)
    ratio_loss(b, p, n).backward()
    f = f_ones / 8
    want = n / (n - 1) * (n * f - 1) / 8  # dL/dG = N/(N-1) (N F - 1), G the mean of 8
    torch.testing.assert_close(p.grad, torch.full((8,), want))
    assert math.copysign(1.0, want) == sign


def test_ratio_loss_masks_padding_and_rejects_a_bad_target():
    b = torch.tensor([[True, False, False, False, True, True]])
    p = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.9, 0.9]])
    valid = torch.tensor([[True, True, True, True, False, False]])
    assert ratio_loss(b, p, 4.0, valid).item() == pytest.approx(1.0, abs=1e-7)
    for bad in (1.0, 0.5, -3.0):
        with pytest.raises(ValueError, match=f"N > 1, got {bad}"):
            ratio_loss(b, p, bad)
