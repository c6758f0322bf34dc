"""The fast CUDA path's proof (run on a GPU machine: ``python -m pytest -m gpu tests/test_gpu.py``).

Every test here is ``@pytest.mark.gpu`` and deselected by default (pyproject ``-m 'not gpu'``).

Tolerances, stated:
- fp32 (TF32 off): FlexAttention logits equal the SDPA reference path's to 1e-4 absolute;
- bf16 autocast: the two paths round differently inside attention, so each is compared with the
  fp32 reference: flex's max error may be at most 2x SDPA's own bf16 max error + 1e-2, and the
  mean absolute difference between the two bf16 paths at most 1e-2 (logits are O(1) at init);
- padding patch columns to a bucket: 1e-5 absolute (fp32), rounding only;
- entropies of the CUDA flex entropy model vs the CPU SDPA one (both fp32): 1e-3 nats.
"""
import json
import math

import pytest
import torch

from bltkit import cli
from bltkit.bench import anchor_patch_rows, blt_patch_lengths, pad_patch_columns, peak_bf16_flops
from bltkit.bench.workloads import bltkit_train_figure
from bltkit.model import ByteLatentTransformer, load_blt_config
from bltkit.patching.lengths import validate_patch_lengths

pytestmark = pytest.mark.gpu

FP32_ATOL = 1e-4
BF16_MEAN_ATOL = 1e-2
BUCKET_ATOL = 1e-5
# (config, rows, bytes): tiny and bench-s shapes (bench-s at 2 x 2048 keeps the dense SDPA masks small).
SHAPES = [("tiny", 2, 512), ("bench-s", 2, 2048)]


@pytest.fixture(scope="module")
def cuda():
    assert torch.cuda.is_available(), "tests/test_gpu.py needs a CUDA GPU (run with -m gpu on a GPU machine)"
    return torch.device("cuda")


@pytest.fixture(autouse=True)
def _no_tf32():
    """fp32 comparisons mean fp32: TF32 matmuls would round to 10 mantissa bits."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _batch(rows, n, seed, device):
    """Random ids with BOS first and EOS inside (documents, block-causal patches); random lengths 1..8."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 260, (rows, n), generator=g)
    ids[torch.rand(rows, n, generator=g) < 0.02] = 2  # EOS
    ids[:, 0] = 1
    pl = blt_patch_lengths(anchor_patch_rows(rows, n, seed=seed))  # (B, P), first 1, Σ = N + 1
    return ids.to(device), pl.to(device)


def _model(name, device):
    torch.manual_seed(0)
    with torch.device(device):
        return ByteLatentTransformer(load_blt_config(name)).eval()


@pytest.mark.parametrize("name, rows, n", SHAPES)
def test_flex_equals_sdpa_fp32(cuda, name, rows, n):
    model = _model(name, cuda)
    ids, pl = _batch(rows, n, 1, cuda)
    with torch.no_grad():
        ref = model(ids, pl, attn_impl="sdpa")
        fast = model(ids, pl, attn_impl="flex")
    assert torch.isfinite(fast).all()
    assert (fast - ref).abs().max().item() <= FP32_ATOL


@pytest.mark.parametrize("name, rows, n", SHAPES)
def test_flex_equals_sdpa_bf16(cuda, name, rows, n):
    model = _model(name, cuda)
    ids, pl = _batch(rows, n, 2, cuda)
    with torch.no_grad():
        ref = model(ids, pl, attn_impl="sdpa")  # fp32 reference
        with torch.autocast("cuda", dtype=torch.bfloat16):
            sdpa = model(ids, pl, attn_impl="sdpa")
            flex = model(ids, pl, attn_impl="flex")
    assert torch.isfinite(flex).all()
    err_sdpa = (sdpa - ref).abs().max().item()
    err_flex = (flex - ref).abs().max().item()
    assert err_flex <= 2 * err_sdpa + 1e-2, (err_flex, err_sdpa)
    assert (flex - sdpa).abs().mean().item() <= BF16_MEAN_ATOL


@pytest.mark.parametrize("impl", ["flex", "sdpa"])
def test_padding_patch_columns_is_a_noop_on_cuda(cuda, impl):
    model = _model("tiny", cuda)
    ids, pl = _batch(3, 700, 3, cuda)
    with torch.no_grad():
        a = model(ids, pl, attn_impl=impl)
        b = model(ids, pad_patch_columns(pl, 64), attn_impl=impl)
    assert (a - b).abs().max().item() <= BUCKET_ATOL


@pytest.mark.parametrize("compile_blocks", [False, True])
def test_training_step_runs_and_learns(cuda, compile_blocks):
    """bf16 autocast, flex masks, fused AdamW, validate=False, bucketed patch columns (the bench's
    step): finite loss, and the loss on one repeated batch goes down."""
    from bltkit.bench import compile_blocks as compile_fn

    model = _model("tiny", cuda).train()
    if compile_blocks:
        assert compile_fn(model) > 0
    ids, pl = _batch(2, 512, 4, cuda)
    x, y = ids[:, :-1], ids[:, 1:]
    pl = blt_patch_lengths(anchor_patch_rows(2, 511, seed=4)).to(cuda)
    pl = pad_patch_columns(pl, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    losses = []
    for _ in range(8):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x, pl, validate=False)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_bench_train_figure_on_cuda(cuda):
    cfg = load_blt_config("tiny")
    model = _model("tiny", cuda)
    ids = torch.randint(4, 260, (2, 513))
    pl = blt_patch_lengths(anchor_patch_rows(2, 512))
    peak = peak_bf16_flops(torch.cuda.get_device_name(cuda))
    rec = bltkit_train_figure(model, cfg, ids, pl, device=cuda, amp=torch.bfloat16, steps=3, warmup=2, bucket=64,
                              peak=peak)
    assert rec["attn_impl"] == "flex" and rec["optimizer"] == "AdamW fused"
    assert rec["bytes_per_s"] > 0 and rec["peak_mem_gib"] > 0 and math.isfinite(rec["loss"])
    assert (rec["mfu"] is None) == (peak is None)
    if peak is not None:
        assert 0 < rec["mfu"] < 1


def test_entropy_patching_runs_on_cuda(cuda):
    """The CUDA (flex) entropy model gives the CPU (SDPA) model's entropies, and valid patches."""
    from bltkit.patching.entropies import compute_entropies

    from bltkit.bench.workloads import entropy_patcher, load_bench_entropy_model

    gpu_model, _ = load_bench_entropy_model("tiny", cuda)
    cpu_model, _ = load_bench_entropy_model("tiny", torch.device("cpu"))
    cpu_model.load_state_dict({k: v.cpu() for k, v in gpu_model.state_dict().items()})
    ids, _ = _batch(2, 1024, 5, cuda)
    h_gpu = compute_entropies(gpu_model, ids, precision="fp32")
    h_cpu = compute_entropies(cpu_model, ids.cpu(), precision="fp32")
    assert (h_gpu.cpu() - h_cpu).abs().max().item() <= 1e-3
    small, _ = load_bench_entropy_model("small", cuda)
    big = torch.randint(4, 260, (8, 4096), device=cuda)
    pl = entropy_patcher(small, 1.335442066192627, "bf16")(big, include_next_token=True).patch_lengths
    validate_patch_lengths(pl, 4096)


def test_bench_cli_on_cuda(cuda, capsys):
    rc = cli.main(["bench", "--config", "tiny", "--rows", "2", "--bytes", "512", "--steps", "2", "--warmup", "1",
                   "--entropy-config", "tiny", "--prompt-bytes", "64", "--new-bytes", "8", "--gen-batch", "4",
                   "--hf-generate-bytes", "4", "--json"])
    assert rc == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["figure"] for r in records] == ["train", "patch", "generate"]
    train = records[0]
    assert train["dtype"] == "bf16 autocast" and train["bltkit"]["attn_impl"] == "flex"
    assert (train["bltkit"]["mfu"] is None) == (peak_bf16_flops(train["device"]) is None)
