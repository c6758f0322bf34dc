"""``bltkit bench`` and the fast path's helpers: the CLI's interface on CPU at the tiny size,
patch-column buckets as a numerical no-op, the anchor's patch lengths, the MFU peak table and
per-block compile."""
import json
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from bltkit import cli
from bltkit.bench import (BenchSettings, anchor_patch_rows, blt_patch_lengths, bucket_size, compile_blocks,
                          hf_patch_lengths, mfu, pad_patch_columns, peak_bf16_flops)
from bltkit.model import ByteLatentTransformer, load_blt_config
from bltkit.nn.attention import CrossAttention
from bltkit.nn.block import TransformerBlock
from bltkit.patching.lengths import validate_patch_lengths

warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")

CPU_ARGS = ["bench", "--config", "tiny", "--rows", "2", "--bytes", "128", "--steps", "1", "--warmup", "0",
            "--entropy-config", "tiny", "--prompt-bytes", "8", "--new-bytes", "2", "--gen-batch", "2",
            "--hf-generate-bytes", "1"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return ByteLatentTransformer(load_blt_config("tiny")).eval()


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


# ---- the command ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_run():
    """One CPU run of every figure (table included); its stdout split into JSON records and text."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = cli.main(CPU_ARGS)
    text = out.getvalue()
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return rc, records, text


def test_cli_prints_one_json_object_a_figure_and_a_table(cli_run):
    rc, records, text = cli_run
    assert rc == 0
    assert [r["figure"] for r in records] == ["train", "patch", "generate"]
    assert "bytes/s" in text and "bltkit/HF" in text  # the readable table follows the JSON lines
    for r in records:
        assert r["config"] == "tiny" and r["device"] == "cpu" and r["dtype"] == "fp32"


def test_train_figure_keys_and_values(cli_run):
    train = cli_run[1][0]
    assert train["rows"] == 2 and train["bytes"] == 128
    assert 3.5 < train["mean_patch"] < 5.5  # lengths drawn uniformly from 1..8
    me = train["bltkit"]
    for key in ("step_ms", "bytes_per_s", "tflop_per_step", "achieved_tflops", "peak_mem_gib", "params_m"):
        assert _positive(me[key]), (key, me[key])
    assert me["mfu"] is None  # no peak for a CPU
    assert me["flops_source"].startswith("analytic") or me["flops_source"].startswith("FlopCounterMode")
    assert me["bytes_per_s"] == pytest.approx(2 * 128 / (me["step_ms"] / 1e3), rel=1e-6)
    # Nothing is compiled on CPU, so no padded columns (they would only add global-model work).
    assert me["bucket"] == 0
    assert me["patch_columns"] == blt_patch_lengths(anchor_patch_rows(2, 128)).shape[1]
    assert math.isfinite(me["loss"])


def test_patch_and_generate_figures(cli_run):
    patch, gen = cli_run[1][1], cli_run[1][2]
    assert _positive(patch["bltkit"]["bytes_per_s"]) and _positive(patch["bltkit"]["ms"])
    assert patch["bltkit"]["mean_patch"] >= 1
    assert patch["bltkit"]["entropy_model_source"].startswith("entropy_model.EntropyModel (tiny")
    # The dense-mask baseline: same weights and bytes, so the same patches, timed beside it.
    dense = patch["bltkit"]["dense_mask"]
    assert dense["mean_patch"] == patch["bltkit"]["mean_patch"] and _positive(dense["bytes_per_s"])
    assert patch["bltkit"]["blocked_over_dense"] == pytest.approx(patch["bltkit"]["bytes_per_s"] / dense["bytes_per_s"])
    for key in ("batch1", "batch2"):
        g = gen["bltkit"][key]
        assert g["new_bytes"] == 2 and _positive(g["bytes_per_s"]) and _positive(g["ttfb_s"])
        assert g["ttfb_s"] <= g["s"]


def test_hf_peer_and_ratio(cli_run):
    """transformers is a test dependency: the HF peer is always measured here."""
    train, patch, gen = cli_run[1]
    hf = train["hf"]
    assert "error" not in hf, hf
    assert _positive(hf["bytes_per_s"]) and hf["mfu"] is None
    # HF's model is built from the same config: same parameter count (no patcher in the train figure).
    assert hf["params_m"] == pytest.approx(train["bltkit"]["params_m"])
    assert train["ratio_bltkit_over_hf"] == pytest.approx(train["bltkit"]["bytes_per_s"] / hf["bytes_per_s"])
    assert any("window" in c for c in train["hf_semantic_changes"])  # tiny has windows HF lacks
    assert patch["ratio_bltkit_over_hf"] == pytest.approx(patch["bltkit"]["bytes_per_s"] / patch["hf"]["bytes_per_s"])
    for key in ("batch1", "batch2"):
        assert gen["hf"][key]["new_bytes"] == 1  # --hf-generate-bytes time-boxes HF
        assert gen["ratio_bltkit_over_hf"][key] == pytest.approx(
            gen["bltkit"][key]["bytes_per_s"] / gen["hf"][key]["bytes_per_s"])


def test_without_transformers_the_hf_figures_are_null(monkeypatch, capsys):
    """Without transformers importable (as in a plain ``pip install bltkit``) the figures still
    come, with ``hf`` and the ratio null."""
    from bltkit.bench import runner

    monkeypatch.setattr(runner, "hf_available", lambda: False)
    args = ["bench", "--config", "tiny", "--bytes", "16", "--rows", "1", "--steps", "1", "--warmup", "0",
            "--only", "patch", "--entropy-config", "tiny", "--json"]
    assert cli.main(args) == 0
    (rec,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert rec["figure"] == "patch" and rec["hf"] is None and rec["ratio_bltkit_over_hf"] is None
    assert rec["bltkit"]["bytes_per_s"] > 0


def test_paths_of_a_figure_are_timed_in_turn(monkeypatch):
    """``time_in_turn`` calls every step once a round, in order, after the warm-up rounds, and
    reports each one's median call (a slow outlier round does not move it); a step that raises
    is left out of later rounds and reported, the others still timed."""
    from bltkit.bench import measure

    clock = {"t": 0.0}
    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock["t"])
    calls = []

    def step(name, seconds):
        def run():
            calls.append(name)
            clock["t"] += seconds(calls.count(name))
        return run

    def broken():
        calls.append("broken")
        if calls.count("broken") == 2:
            raise RuntimeError("peer failed")

    steps = {"a": step("a", lambda k: 100.0 if k == 3 else 1.0), "b": step("b", lambda k: 3.0), "broken": broken}
    timed, errors, kind = measure.time_in_turn(steps, rounds=4, warmup=1, device=torch.device("cpu"))
    assert calls[:6] == ["a", "b", "broken"] * 2 and calls[6:] == ["a", "b"] * 3
    assert {k: v[0] for k, v in timed.items()} == {"a": 1.0, "b": 3.0}
    assert list(errors) == ["broken"] and "peer failed" in str(errors["broken"])
    assert "RSS" in kind and all(v[1] > 0 for v in timed.values())


def test_patch_figure_survives_a_failing_peer(monkeypatch, capsys):
    """The patch figure's paths are timed in turn; HF failing mid-run becomes its ``error`` while
    bltkit's figure and its dense baseline stand."""
    from bltkit.bench import runner

    def failing(*args, **kwargs):
        def step():
            raise RuntimeError("HF patcher exploded")
        return step, lambda *a: {}

    monkeypatch.setattr(runner, "hf_patch_step", failing)
    args = ["bench", "--config", "tiny", "--bytes", "16", "--rows", "1", "--steps", "2", "--warmup", "0",
            "--only", "patch", "--entropy-config", "tiny", "--json"]
    assert cli.main(args) == 0
    (rec,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert rec["timing"] == "in turn" and "HF patcher exploded" in rec["hf"]["error"]
    assert rec["ratio_bltkit_over_hf"] is None
    assert rec["bltkit"]["bytes_per_s"] > 0 and rec["bltkit"]["dense_mask"]["bytes_per_s"] > 0


@pytest.mark.parametrize("args, needle", [
    (["--only", "train,sing"], "sing"),
    (["--config", "no-such-size"], "no-such-size"),
    (["--rows", "0"], "rows"),
    (["--entropy-config", "huge"], "huge"),
])
def test_bad_options_name_the_value(capsys, args, needle):
    base = ["bench", "--config", "tiny", "--bytes", "16", "--steps", "1", "--warmup", "0", "--no-hf",
            "--only", "patch", "--entropy-config", "tiny"]
    assert cli.main(base + args) == 2  # later options override earlier ones
    assert needle in capsys.readouterr().err


# ---- buckets: padding patch columns changes no real byte's logits --------------------------------
def _random_case(seed, b, n, eos_rate):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 260, (b, n), generator=g)
    ids[torch.rand(b, n, generator=g) < eos_rate] = 2  # EOS: documents and block-causal patches
    ids[:, 0] = 1
    return ids, blt_patch_lengths(anchor_patch_rows(b, n, seed=seed))  # (B, P), first 1, Σ = N + 1


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), b=st.integers(1, 3), n=st.integers(2, 80), eos=st.sampled_from([0.0, 0.1]),
       multiple=st.sampled_from([8, 16, 64]))
def test_padding_patch_columns_keeps_logits_sdpa(tiny, seed, b, n, eos, multiple):
    ids, pl = _random_case(seed, b, n, eos)
    padded = pad_patch_columns(pl, multiple)
    assert padded.shape[1] % multiple == 0 and padded.shape[1] >= pl.shape[1]
    validate_patch_lengths(padded, n)  # still a valid model input
    with torch.no_grad():
        a = tiny(ids, pl, attn_impl="sdpa")
        p = tiny(ids, padded, attn_impl="sdpa")
    # Identical up to float rounding (about 1e-6): CPU matmuls over P' rows instead of P may block
    # the sums differently, so bit equality is not promised; every masked value is exactly excluded.
    torch.testing.assert_close(p, a, rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed, b, n, eos", [(1, 2, 40, 0.1), (2, 1, 3, 0.0)])
def test_padding_patch_columns_keeps_logits_flex(tiny, seed, b, n, eos):
    """The fast path (eager flex on CPU) with patch columns padded to 64 gives the same logits."""
    ids, pl = _random_case(seed, b, n, eos)
    with torch.no_grad():
        a = tiny(ids, pl, attn_impl="flex")
        p = tiny(ids, pad_patch_columns(pl, 64), attn_impl="flex")
    torch.testing.assert_close(p, a, rtol=0, atol=1e-5)


def test_bucket_default_pads_only_where_something_compiles():
    from bltkit.nn.attention import flex_compiles

    assert not flex_compiles(torch.device("cpu"))  # eager flex on CPU: no recompiles
    assert flex_compiles(torch.device("cuda"))  # compiled flex_attention
    assert BenchSettings().bucket_for(compiled_attention=False) == 0
    assert BenchSettings().bucket_for(compiled_attention=True) == 64
    assert BenchSettings(compile=True).bucket_for(compiled_attention=False) == 64
    assert BenchSettings(bucket=128).bucket_for(compiled_attention=False) == 128
    assert BenchSettings(bucket=0).bucket_for(compiled_attention=True) == 0
    with pytest.raises(ValueError, match="bucket -1"):
        BenchSettings(bucket=-1).validate()


def test_bucket_size():
    assert [bucket_size(p, 64) for p in (1, 63, 64, 65, 128)] == [64, 64, 64, 128, 128]
    assert bucket_size(37, 0) == 37
    with pytest.raises(ValueError, match="-1"):
        bucket_size(3, -1)
    with pytest.raises(ValueError, match="shape"):
        pad_patch_columns(torch.ones(3, dtype=torch.long), 8)


# ---- the anchor's patch lengths in both conventions ---------------------------------------------
@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 4), n=st.integers(1, 300), seed=st.integers(0, 100))
def test_anchor_rows_in_both_conventions(rows, n, seed):
    r = anchor_patch_rows(rows, n, seed)
    assert r == anchor_patch_rows(rows, n, seed)  # deterministic
    assert all(sum(x) == n and all(1 <= v <= 8 for v in x) for x in r)
    hpl, bpl = hf_patch_lengths(r), blt_patch_lengths(r)
    assert hpl.sum(1).tolist() == [n] * rows  # HF: Σ = N
    validate_patch_lengths(bpl, n)  # bltkit: first 1, Σ = N + 1
    assert torch.equal(bpl[:, 1:], hpl)  # the same patches after the BOS one


def test_anchor_mean_patch_is_about_four_and_a_half():
    lengths = [v for row in anchor_patch_rows(8, 4096) for v in row]
    assert 4.3 < sum(lengths) / len(lengths) < 4.7


# ---- MFU peaks -------------------------------------------------------------------------------------
def test_peak_table_and_mfu():
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12  # H100 SXM
    assert peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("cpu") is None and peak_bf16_flops("NVIDIA GeForce GTX 1080") is None
    assert mfu(989e12, 2.0, 989e12) == pytest.approx(0.5)
    assert mfu(None, 1.0, 989e12) is None and mfu(1e12, 1.0, None) is None


# ---- per-block compile ----------------------------------------------------------------------------
def test_compile_blocks_compiles_every_block_and_keeps_logits():
    """Dynamo traces each block with its FlexAttention BlockMask input (eager backend: no C++
    compiler needed on CPU) and gives the eager logits."""
    torch.manual_seed(0)
    model = ByteLatentTransformer(load_blt_config("tiny")).eval()
    ids, pl = _random_case(3, 2, 40, 0.1)
    with torch.no_grad():
        ref = model(ids, pl, attn_impl="flex")
    n = compile_blocks(model, backend="eager")
    blocks = sum(isinstance(m, (TransformerBlock, CrossAttention)) for m in model.modules())
    cfg = model.config
    assert n == blocks == (cfg.encoder.n_layers + cfg.global_model.n_layers + cfg.decoder.n_layers
                           + cfg.n_encoder_cross + cfg.n_decoder_cross)
    with torch.no_grad():
        out = model(ids, pl, attn_impl="flex")
    assert torch.equal(out, ref)
