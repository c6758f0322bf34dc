"""Cached generation equals full recomputation (docs/reference-semantics.md §14).

The cached path (entropy-model, encoder, global and decoder KV caches; boundaries decided byte by
byte) must give the logits and bytes of rerunning ``Patcher(prefix, include_next_token=True)``
and ``model(ids, patch_lengths)`` on the whole prefix every byte. Random tiny models, sampling
with a fixed seed (greedy random models repeat themselves), local windows shorter than the
sequences (so the ring caches wrap), an entropy threshold at the median entropy (varied patches).
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bltkit.data.vocab import EOS_ID, encode
from bltkit.inference.boundaries import OnlineBoundaries
from bltkit.inference.generate import collect
from bltkit.inference.recompute import RecomputeStepper
from bltkit.inference.sampling import SamplingParams
from bltkit.inference.stepper import TUNED, CachedStepper
from bltkit.model import ByteLatentTransformer, load_blt_config
from bltkit.nn.kv_cache import RING_MARGIN
from bltkit.patching.config import PatcherConfig
from bltkit.patching.lengths import pad_rows
from bltkit.patching.patcher import Patcher
from bltkit.patching.entropies import compute_entropies
from entropy_model.model import EntropyModel, load_entropy_config

CPU = torch.device("cpu")
SMALL = ["encoder.window=32", "decoder.window=32", "hash.vocab=257"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(1)
    blt = ByteLatentTransformer(load_blt_config("tiny", SMALL)).eval()
    em = EntropyModel(load_entropy_config("tiny", ["window=24", "dim=32", "n_heads=2"])).eval()
    text = encode("The cat sat on the mat; 日本語 and emoji 😀, numbers 12345.", eos=False)
    h = compute_entropies(em, [torch.tensor(text)])[0]
    return blt, em, float(h[1:].median())


def _patcher(scheme, threshold):
    return PatcherConfig(scheme=scheme, threshold=threshold if scheme in ("entropy", "monotonic") else None,
                         patch_size=3, max_patch_length=5 if scheme == "entropy" else None)


@pytest.mark.parametrize("scheme", ["entropy", "space", "static", "byte"])
def test_cached_equals_recompute_256_bytes(models, scheme):
    blt, em, th = models
    cfg = _patcher(scheme, th)
    prompt = [encode("Hi, 日本", eos=False)]
    params = SamplingParams(temperature=1.0)
    a = collect(CachedStepper(blt, cfg, em, 300, CPU), prompt, 256, params, [7], trace=True)[0]
    b = collect(RecomputeStepper(blt, cfg, em, CPU), prompt, 256, params, [7], trace=True)[0]
    assert a.new_ids == b.new_ids and a.bytes == b.bytes
    assert a.new_ids >= 100  # a real run, not an early EOS
    worst = max(float((x - y).abs().max()) for x, y in zip(a.logits, b.logits))
    assert worst < 1e-4
    if scheme == "entropy":  # the threshold gives varied patches on the generated text
        ids = torch.tensor([prompt[0] + [x + 4 for x in b.bytes[:200]]])
        pl = Patcher(cfg, scorer=em)(ids, include_next_token=True).rows()[0]
        assert len(set(pl)) >= 3


def test_monotonic_greedy_matches(models):
    blt, em, _ = models
    cfg = PatcherConfig(scheme="monotonic", threshold=0.05)
    prompt = [encode("abc", eos=False)]
    params = SamplingParams(temperature=0.7, top_k=40)
    a = collect(CachedStepper(blt, cfg, em, 100, CPU), prompt, 60, params, [3], trace=True)[0]
    b = collect(RecomputeStepper(blt, cfg, em, CPU), prompt, 60, params, [3], trace=True)[0]
    assert a.bytes == b.bytes
    assert max(float((x - y).abs().max()) for x, y in zip(a.logits, b.logits)) < 1e-4


def test_batch_equals_one_at_a_time(models):
    blt, em, th = models
    cfg = _patcher("entropy", th)
    prompts = [encode(p, eos=False) for p in ["", "Hello there", "日本語😀", "Hello there"]]
    params = SamplingParams(temperature=1.0, top_p=0.9)
    seeds = [1, 2, 3, 4]
    batch = collect(CachedStepper(blt, cfg, em, 200, CPU), prompts, 80, params, seeds, trace=True)
    for p, s, g in zip(prompts, seeds, batch):
        one = collect(CachedStepper(blt, cfg, em, 200, CPU), [p], 80, params, [s], trace=True)[0]
        assert one.bytes == g.bytes and one.stop_reason == g.stop_reason
        assert max(float((x - y).abs().max()) for x, y in zip(one.logits, g.logits)) < 1e-4


def test_finished_rows_are_masked_and_the_others_stay_exact(models):
    """Rows finish mid-way (``live`` False): their caches stand still, the others go on exactly."""
    blt, em, th = models
    cfg = _patcher("entropy", th)
    prompts = [encode(p, eos=False) for p in ["one", "two two", "three three three"]]
    cached, ref = CachedStepper(blt, cfg, em, 100, CPU), RecomputeStepper(blt, cfg, em, CPU)
    a, b = cached.start(prompts), ref.start(prompts)
    g = torch.Generator().manual_seed(0)
    live = torch.ones(3, dtype=torch.bool)
    for step in range(40):
        assert torch.allclose(a[live], b[live], atol=1e-4, rtol=0)
        if step in (10, 25):  # the first row still going finishes
            live[int(live.nonzero()[0])] = False
        ids = torch.randint(4, 260, (3,), generator=g)
        a, b = cached.step(ids, live), ref.step(ids, live)
    assert cached.cache.length.tolist() == [len(prompts[0]) + 10, len(prompts[1]) + 25, len(prompts[2]) + 40]


@pytest.mark.parametrize("overrides, n, first", [
    ([], 40, 12),
    (["cross_attn.encoder_all_layers=true", "encoder.n_layers=2"], 40, 12),
    (["cross_attn.repool_each_layer=true", "cross_attn.encoder_all_layers=true", "encoder.n_layers=2", "cross_attn.pooling=mean"], 40, 12),
    (["global_model.doc_reset=false", "cross_attn.decoder_all_layers=false", "encoder.window=null", "decoder.doc_reset=false"], 40, 12),
    ([], 3 * (8 + RING_MARGIN), 8 + RING_MARGIN + 10),  # rings: a first chunk longer than one, then bytes past it
])
def test_blt_cache_equals_forward_with_eos_and_chunks(overrides, n, first):
    """Direct check of the BLT caches against the forward on every prefix: EOS inside the rows
    (document resets, block-causal global), a first chunk longer than the window, ragged
    boundaries, the model variants that change the encoder's patch vectors, and rows several
    windowed rings long."""
    torch.manual_seed(0)
    cfg = load_blt_config("tiny", SMALL + ["encoder.window=8", "decoder.window=8"] + overrides)
    m = ByteLatentTransformer(cfg).eval()
    b = 3
    ids = torch.randint(4, 260, (b, n))
    ids[:, 0] = 1
    ids[1, 9] = EOS_ID
    ids[2, 20] = EOS_ID
    starts = torch.rand(b, n + 1) < 0.35
    starts[:, :2] = True
    cache = m.new_cache(b, n + 1)
    with torch.no_grad():
        out = m(ids[:, :first], cache=cache, starts_next=starts[:, 1:first + 1])[:, -1]
    for t in range(first, n + 1):
        rows = [[j for j in range(t + 1) if starts[r, j]] for r in range(b)]
        pl = pad_rows([[e - s for s, e in zip(st_, st_[1:] + [t + 1])] for st_ in rows])
        with torch.no_grad():
            full = m(ids[:, :t], pl)[:, -1]
        assert torch.allclose(out, full, atol=1e-4, rtol=0), t
        if t < n:
            with torch.no_grad():
                out = m(ids[:, t:t + 1], cache=cache, starts_next=starts[:, t + 1:t + 2])[:, -1]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), mode=st.sampled_from(["max", "min", "mean"]), seed=st.integers(0, 2**16))
def test_pooling_one_patch_equals_the_scatter(n, mode, seed):
    """A decode step pools its one closing patch as a masked reduction (``_pool_one``): the
    values of the scatter-reduce over more patches, 0 for an empty patch."""
    from bltkit.model.local_encoder import pool_patches

    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2, n, 8, generator=g)
    pid = torch.randint(0, 3, (2, n), generator=g)  # 0: the patch; 1, 2: other patches
    pid[1] = 1 + pid[1].clamp(max=1)  # row 1 has no byte in patch 0
    one = pool_patches(h, torch.where(pid == 0, 0, 1), 1, mode)  # (B, 1, D); 1 = "no patch asked"
    ref = pool_patches(h, pid, 3, mode)[:, :1]
    torch.testing.assert_close(one, ref, atol=1e-6, rtol=1e-6)
    assert (one[1] == 0).all()


def test_entropy_model_cache_equals_forward(models):
    """The entropy model's ring cache (window 24) gives its full-sequence logits, EOS included."""
    _, em, _ = models
    ids = torch.randint(4, 260, (2, 70))
    ids[:, 0] = 1
    ids[0, 30] = EOS_ID
    cache = em.new_cache(2, 80)
    with torch.no_grad():
        first = em(ids[:, :30], cache=cache)
        rest = [em(ids[:, t:t + 1], cache=cache) for t in range(30, 70)]
        full = em(ids)
    got = torch.cat([first, *rest], dim=1)
    assert torch.allclose(got, full, atol=1e-4, rtol=0)


def test_ring_cache_equals_forward_through_every_kind_of_chunk():
    """A windowed stack keeps a ring of window + RING_MARGIN slots: over a row several rings
    long, fed as a first chunk longer than the ring, single bytes, chunks up to RING_MARGIN
    (written, then read) and past it (read, then written), ragged rows and a rollback of
    RING_MARGIN entries, every logit equals the full-sequence forward's."""
    torch.manual_seed(0)
    em = EntropyModel(load_entropy_config("tiny", ["window=8", "dim=32", "n_heads=2"])).eval()
    n = 420
    ids = torch.randint(4, 260, (2, n))
    ids[:, 0] = 1
    ids[0, 150] = EOS_ID
    ids[1, 300] = EOS_ID
    with torch.no_grad():
        full = em(ids)
    cache = em.new_cache(2, n)
    assert cache.ring and cache.slots == 8 + RING_MARGIN < n
    got = torch.zeros_like(full)
    fed = torch.zeros(2, dtype=torch.int64)  # bytes each row has fed

    def feed(widths):  # row r feeds its next widths[r] bytes (0: none), right-padded
        t = max(widths)
        chunk = torch.zeros(2, t, dtype=torch.int64)
        valid = torch.zeros(2, t, dtype=torch.bool)
        for r, w in enumerate(widths):
            chunk[r, :w] = ids[r, fed[r]:fed[r] + w]
            valid[r, :w] = True
        with torch.no_grad():
            out = em(chunk, cache=cache, valid=valid)
        for r, w in enumerate(widths):
            got[r, fed[r]:fed[r] + w] = out[r, :w]
            fed[r] += w

    feed([100, 90])  # longer than the ring: read before written, the last R entries kept
    for _ in range(5):
        feed([1, 1])
    feed([RING_MARGIN, 3])  # written, then read
    feed([RING_MARGIN + 1, 70])  # read, then written
    snap = cache.snapshot()
    feed([RING_MARGIN, RING_MARGIN])  # a draft, rolled back whole
    cache.restore(snap)
    fed -= RING_MARGIN
    feed([40, 0])
    while int(fed.min()) < n:
        feed([min(int(w), n - int(f)) for w, f in zip(torch.randint(0, 12, (2,)), fed)])
    torch.testing.assert_close(got, full, atol=1e-4, rtol=0)


def test_byte_lm_generation_cached_equals_recompute():
    from bltkit.patchtrain.config import load_bytelm_config
    from bltkit.patchtrain.model import ByteLM

    m = ByteLM(load_bytelm_config("tiny")).eval()
    prompt = [encode("byte lm", eos=False)]
    params = SamplingParams(temperature=1.0)
    a = collect(CachedStepper(m, None, None, 80, CPU), prompt, 40, params, [5], trace=True)[0]
    b = collect(RecomputeStepper(m, None, None, CPU), prompt, 40, params, [5], trace=True)[0]
    assert a.bytes == b.bytes
    assert max(float((x - y).abs().max()) for x, y in zip(a.logits, b.logits)) < 1e-4


# ---- boundaries: the byte-by-byte rule equals the Patcher on the full prefix -----------------------
rule_cfgs = st.sampled_from([
    PatcherConfig(scheme="entropy", threshold=1.0),
    PatcherConfig(scheme="entropy", threshold=1.0, max_patch_length=3),
    PatcherConfig(scheme="entropy", threshold=1.0, threshold_add=0.2),
    PatcherConfig(scheme="monotonic", threshold=0.3),
    PatcherConfig(scheme="monotonic", threshold=0.3, max_patch_length=2),
    PatcherConfig(scheme="space"),
    PatcherConfig(scheme="space", max_patch_length=4),
    PatcherConfig(scheme="static", patch_size=3),
    PatcherConfig(scheme="byte"),
])


@settings(max_examples=60, deadline=None)
@given(cfg=rule_cfgs, data=st.data())
def test_online_boundaries_equal_patcher(cfg, data):
    n = data.draw(st.integers(1, 40))
    body = data.draw(st.lists(st.sampled_from([1, 2, 36, 37, 48, 69, 101, 102, 200, 230, 150]), min_size=n - 1, max_size=n - 1))
    ids = torch.tensor([1] + body)
    h = torch.tensor(data.draw(st.lists(st.floats(0, 3, width=32), min_size=n, max_size=n)))
    cut = data.draw(st.integers(1, n))  # a prompt chunk, then byte by byte
    ob = OnlineBoundaries(cfg, 1, CPU)
    pos = torch.arange(n)[None]
    dec = [ob.decide(ids[None, :cut], pos[:, :cut], h[None, :cut])]
    for t in range(cut, n):
        dec.append(ob.decide(ids[None, t:t + 1], pos[:, t:t + 1], h[None, t:t + 1]))
    starts_next = torch.cat(dec, dim=1)[0].tolist()
    patcher = Patcher(cfg)
    for s in range(1, n + 1):  # every prefix: the last boundary is the one decided after byte s-1
        pl = patcher(ids[None, :s], include_next_token=True, scores=h[None, :s]).rows()[0]
        last_start = sum(pl[:-1])
        assert (last_start == s) == starts_next[s - 1], (s, pl)


@pytest.mark.gpu
def test_cached_equals_recompute_on_cuda(models):
    """On the GPU (FlexAttention in the full forward, SDPA in the caches), fp32: same bytes."""
    blt, em, th = models
    dev = torch.device("cuda")
    blt_c, em_c = ByteLatentTransformer(blt.config).to(dev).eval(), EntropyModel(em.config).to(dev).eval()
    blt_c.load_state_dict(blt.state_dict())
    em_c.load_state_dict(em.state_dict())
    cfg = _patcher("entropy", th)
    prompts = [encode(p, eos=False) for p in ["Hi, 日本", "", "a longer prompt here"]]
    params = SamplingParams(temperature=1.0)
    a = collect(CachedStepper(blt_c, cfg, em_c, 300, dev), prompts, 128, params, [7, 8, 9], trace=True)
    b = collect(RecomputeStepper(blt_c, cfg, em_c, dev), prompts, 128, params, [7, 8, 9], trace=True)
    for x, y in zip(a, b):
        assert x.bytes == y.bytes
        assert max(float((p - q).abs().max()) for p, q in zip(x.logits, y.logits)) < 1e-3


@pytest.mark.parametrize("split", [False, True])
def test_compiled_step_has_no_graph_break_and_equals_eager(models, split):
    """The one-byte decode step holds no host sync and no shape change: it traces whole under
    ``torch.compile(fullgraph=True)`` (a graph break raises) and gives the eager step's bytes.
    Split (the CPU default): each half traces whole, and the host's read between them runs the
    global model only on bytes that close a patch (fewer global calls, the same bytes).
    The cheap ``eager`` backend checks the capture; inductor would only add code generation."""
    blt, em, th = models
    cfg = _patcher("entropy", th)
    prompts = [encode(p, eos=False) for p in ["Hi", "a ragged batch"]]
    params = SamplingParams(temperature=1.0)
    for cfg, rows in ((cfg, prompts), (_patcher("static", None), prompts[:1])):  # static: a patch every 3 bytes
        eager = collect(CachedStepper(blt, cfg, em, 40, CPU), rows, 8, params, [1, 2][:len(rows)], trace=True)
        st = CachedStepper(blt, cfg, em, 40, CPU, compile="eager", split_global=split)
        halves = []
        if split:  # count which second half the host picks each step
            st._back_fns = tuple((lambda *a, f=f, w=w: halves.append(w) or f(*a)) for w, f in enumerate(st._back_fns))
        comp = collect(st, rows, 8, params, [1, 2][:len(rows)], trace=True)
        for x, y in zip(eager, comp):
            assert x.bytes == y.bytes and x.new_ids == 8
            assert max(float((p - q).abs().max()) for p, q in zip(x.logits, y.logits)) < 1e-5
        assert st._warm == ({"encode", *halves} if split else {"step"})
    if split:  # 7 steps after the prompt: the global model ran on the 2 or 3 that closed a patch
        assert len(halves) == 7 and sum(halves) in (2, 3)


def test_split_default_follows_the_global_models_size(models, monkeypatch):
    """By default a compiled CPU step splits at the global model only when that model is big
    enough to repay the second graph call (``SPLIT_MIN_GLOBAL_PARAMS``); never when eager."""
    import bltkit.inference.stepper as stepper

    blt, em, th = models
    cfg = _patcher("entropy", th)
    assert not CachedStepper(blt, cfg, em, 40, CPU, compile="eager").split  # the tiny global model
    monkeypatch.setattr(stepper, "SPLIT_MIN_GLOBAL_PARAMS", 1)
    assert CachedStepper(blt, cfg, em, 40, CPU, compile="eager").split
    assert not CachedStepper(blt, cfg, em, 40, CPU).split
    with pytest.raises(ValueError, match="split_global=True needs compile"):
        CachedStepper(blt, cfg, em, 40, CPU, split_global=True)


def _in_turn(steppers, steps: int):
    """Each stepper starts on "a b c d", then they step the byte "e" in turn; logits a stepper."""
    prompt, ids = [encode("a b c d", eos=False)], torch.tensor([ord("e") + 4])
    out = [[] for _ in steppers]
    for st in steppers:
        st.start(prompt)
    for _ in range(steps):
        for i, st in enumerate(steppers):
            out[i].append(st.step(ids))
    return [torch.stack(o) for o in out]


def test_compiled_steps_of_two_models_interleaved_each_equal_eager():
    """After a generation's first step, a compiled step evaluates only the guards that tell
    compiled entries apart: two models of the same shapes but another pooling (a value the
    graph specialises on) stepped in turn each still run their own graph."""
    torch.manual_seed(3)
    blts = [ByteLatentTransformer(load_blt_config("tiny", SMALL + [f"cross_attn.pooling={m}"])).eval()
            for m in ("max", "mean")]
    blts[1].load_state_dict(blts[0].state_dict())
    cfg = PatcherConfig(scheme="space")
    eager = _in_turn([CachedStepper(b, cfg, None, 20, CPU) for b in blts], 6)
    comp = _in_turn([CachedStepper(b, cfg, None, 20, CPU, compile="eager") for b in blts], 6)
    assert (eager[0] - eager[1]).abs().max() > 1e-4  # the two models differ
    for e, c in zip(eager, comp):
        torch.testing.assert_close(c, e, atol=1e-5, rtol=0)


def test_tuned_steps_of_two_models_with_other_weights_each_equal_eager():
    """``compile="max-autotune"`` freezes the weights into the graph: two models of the same
    shapes and settings but other weights, stepped in turn, each run their own weights, and so
    does a model whose weights changed in place since its last tuned generation. Tiny entropy
    models as byte LMs: the same stepper, guard and autotuned GEMMs as a BLT's step, at a third
    of a BLT step's compile time (each tuned graph compiles anew: 80 s cold, then 23 s)."""
    ems = [EntropyModel(load_entropy_config("tiny")).eval() for _ in range(2)]
    torch.manual_seed(5)
    ems[1].init_weights()
    eager = _in_turn([CachedStepper(e, None, None, 20, CPU) for e in ems], 3)
    tuned = _in_turn([CachedStepper(e, None, None, 20, CPU, compile=TUNED) for e in ems], 3)
    assert (eager[0] - eager[1]).abs().max() > 1e-3  # the two models differ
    for e, c in zip(eager, tuned):
        torch.testing.assert_close(c, e, atol=1e-4, rtol=0)
    # Weights updated in place (an optimizer step, load_state_dict): a new tuned generation runs
    # the new weights, not the graph that froze the old ones.
    before = eager[0]
    with torch.no_grad():
        for p in ems[0].parameters():
            p.mul_(1.5)
    eager = _in_turn([CachedStepper(ems[0], None, None, 20, CPU)], 3)
    tuned = _in_turn([CachedStepper(ems[0], None, None, 20, CPU, compile=TUNED)], 3)
    assert (eager[0] - before).abs().max() > 1e-3  # the update changed the logits
    torch.testing.assert_close(tuned[0], eager[0], atol=1e-4, rtol=0)


def test_eager_steps_read_only_the_slots_rows_reached(models):
    """An eager step reads the cache slots the longest row has reached, not every preallocated
    one (its cost follows the text, not ``max_bytes``), with the same logits as a compiled-shape
    step that reads all of them."""
    blt, em, th = models
    cfg = _patcher("entropy", th)
    prompts = [encode(p, eos=False) for p in ["Hi there", "a ragged batch"]]
    eager, static = CachedStepper(blt, cfg, em, 400, CPU), CachedStepper(blt, cfg, em, 400, CPU, compile="eager")
    a, b = eager.start(prompts), static.start(prompts)
    n = max(len(p) for p in prompts)
    assert (eager.cache.visible, eager.cache.enc.visible, eager.cache.glob.visible, eager.ecache.visible) == \
        (n, n, n + 1, n)
    # A compiled-shape step reads every slot: the byte slots, and each windowed stack's ring.
    dec, ec = static.cache.dec, static.ecache
    assert (dec.slots, ec.slots) == (dec.window + RING_MARGIN, ec.window + RING_MARGIN) and max(dec.slots, ec.slots) < 400
    assert (static.cache.visible, dec.visible, ec.visible) == (400, dec.slots, ec.slots)
    for _ in range(5):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        ids = a.argmax(dim=-1)
        a, b = eager.step(ids), static.step(ids)
    assert eager.cache.visible == n + 5 and static.cache.visible == 400


def test_generation_past_the_preallocated_cache_is_a_clear_error(models):
    blt, em, th = models
    st = CachedStepper(blt, _patcher("space", th), em, 6, CPU)
    st.start([encode("abc", eos=False)])  # BOS + 3 = 4 bytes
    st.step(torch.tensor([70]))
    st.step(torch.tensor([70]))
    with pytest.raises(ValueError, match="reach 7 bytes, past the 6 bytes"):
        st.step(torch.tensor([70]))


@pytest.mark.gpu
def test_cuda_graph_steps_equal_eager(models):
    """The static one-byte step, captured once as a CUDA graph and replayed, gives the eager
    step's bytes: the BLT (with its entropy model) and the entropy model alone as a byte LM."""
    blt, em, th = models
    dev = torch.device("cuda")
    blt_c, em_c = ByteLatentTransformer(blt.config).to(dev).eval(), EntropyModel(em.config).to(dev).eval()
    blt_c.load_state_dict(blt.state_dict())
    em_c.load_state_dict(em.state_dict())
    prompts = [encode(p, eos=False) for p in ["Hi, 日本", "", "a longer prompt here"]]
    params = SamplingParams(temperature=1.0)
    for model, cfg, e in [(blt_c, _patcher("entropy", th), em_c), (em_c, None, None)]:
        a = collect(CachedStepper(model, cfg, e, 200, dev), prompts, 96, params, [7, 8, 9], trace=True)
        b = collect(CachedStepper(model, cfg, e, 200, dev, cuda_graph=True), prompts, 96, params, [7, 8, 9], trace=True)
        for x, y in zip(a, b):
            assert x.bytes == y.bytes and x.new_ids == y.new_ids
            assert max(float((p - q).abs().max()) for p, q in zip(x.logits, y.logits)) < 1e-4
