"""Data sources, the built-in corpus, mixtures and the one resumable loader (docs/reference-semantics.md §12.3).
No network: Hugging Face datasets are local (``save_to_disk``, ``load_dataset("json", ...)``)."""
import io
import json
import re

import pytest
import torch

from bltkit.config import ConfigError, from_dict
from bltkit.data.corpus import builtin_corpus_path, builtin_files, builtin_names
from bltkit.data.sources import (DataSource, DocumentStream, Mixture, SourceConfig, heldout_documents,
                                 iter_documents, is_heldout)
from bltkit.data.vocab import BOS_ID, EOS_ID, decode_bytes
from bltkit.patching import DocumentPatcher, Patcher, PatcherConfig
from bltkit.patching.lengths import validate_patch_lengths
from bltkit.training.config import load_train_config, train_config_from_dict
from bltkit.training.data import DataConfig, DataLoader, heldout_batches
from bltkit.training.patch_source import document_patcher


def static_patches(k=3) -> DocumentPatcher:
    return document_patcher({"scheme": "static", "patch_size": k})


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def docs(spec, **kw):
    return list(iter_documents([spec], **kw))


# ---- source types ---------------------------------------------------------------------------------

def test_txt_file_and_blank_line_split(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(b"first para\nline two\n\n\nsecond para\r\n \r\nthird\n")
    assert docs(str(p)) == [p.read_bytes()]
    assert docs(str(p), txt_split="blank_lines") == [b"first para\nline two", b"second para", b"third\n"]


def test_non_utf8_txt_is_bytes(tmp_path):
    raw = b"caf\xe9 \xff\xfe \x80 ok"
    (tmp_path / "latin1.txt").write_bytes(raw)
    (d,) = docs(str(tmp_path / "latin1.txt"))
    assert d == raw
    cfg = DataConfig(train=[str(tmp_path / "latin1.txt")], eval_fraction=0.0, seq_len=len(raw) + 2,
                     batch_size=1, shuffle_buffer=1)
    b = next(DataLoader(cfg))
    assert b["ids"][0, 0] == BOS_ID and decode_bytes(b["ids"][0]) == raw


def test_jsonl_json_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = ["alpha ünïcode", "beta", "gamma"]
    jl = write_jsonl(tmp_path / "d.jsonl", [{"text": t, "id": i} for i, t in enumerate(texts)])
    js = tmp_path / "d.json"
    js.write_text(json.dumps([{"body": t} for t in texts]), encoding="utf-8")
    pq.write_table(pa.table({"text": texts}), str(tmp_path / "d.parquet"))
    want = [t.encode() for t in texts]
    assert docs(jl) == want
    assert docs(str(js), text_field="body") == want
    assert docs(str(tmp_path / "d.parquet")) == want


def test_directory_and_glob(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_bytes(b"B")
    (tmp_path / "sub" / "a.txt").write_bytes(b"A")
    write_jsonl(tmp_path / "c.jsonl", [{"text": "C1"}, {"text": "C2"}])
    (tmp_path / "notes.md").write_text("ignored")
    assert docs(str(tmp_path)) == [b"B", b"C1", b"C2", b"A"]  # sorted paths, recursive
    assert docs(str(tmp_path / "**" / "*.txt")) == [b"B", b"A"]
    assert docs(str(tmp_path / "*.jsonl")) == [b"C1", b"C2"]


def test_hf_saved_dataset_and_json_builder(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["one", "two"], "n": [1, 2]}).save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["t"]}),
                          "validation": datasets.Dataset.from_dict({"text": ["v"]})}).save_to_disk(str(tmp_path / "dd"))
    assert docs(str(tmp_path / "ds")) == [b"one", b"two"]
    assert list(DataSource(SourceConfig(path=str(tmp_path / "dd"), split="validation")).documents()) == [b"v"]
    jl = write_jsonl(tmp_path / "x.jsonl", [{"content": "hub-like"}])
    for streaming in (True, False):
        src = DataSource(SourceConfig(path="hf:json", data_files=[jl], text_field="content", streaming=streaming))
        assert list(src.documents()) == [b"hub-like"]


def test_limit_bytes_and_resume_position(tmp_path):
    jl = write_jsonl(tmp_path / "d.jsonl", [{"text": "x" * 10} for _ in range(10)])
    assert list(iter_documents([jl], limit_bytes=25)) == [b"x" * 10] * 2 + [b"x" * 5]  # the last one cut
    assert list(DataSource(jl).documents(start=8)) == [b"x" * 10] * 2


# ---- errors ---------------------------------------------------------------------------------------

def test_missing_path_names_it(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        iter_documents([missing]).__next__()
    with pytest.raises(FileNotFoundError, match="no supported data files match"):
        DataSource(str(tmp_path / "*.parquet"))
    with pytest.raises(FileNotFoundError, match="x.jsonl"):
        list(DataSource(SourceConfig(path="hf:json", data_files=[str(tmp_path / "x.jsonl")])).documents())
    with pytest.raises(ValueError, match="unsupported type"):
        (tmp_path / "a.csv").write_text("x")
        DataSource(str(tmp_path / "a.csv"))


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    # Compressed empty files are not empty on disk; ``datasets`` raised a bare StopIteration on them
    # (inside our generator: "RuntimeError: generator raised StopIteration").
    import bz2
    import gzip

    gzip.open(tmp_path / "empty.jsonl.gz", "wb").close()
    with bz2.open(tmp_path / "blank.jsonl.bz2", "wb") as f:
        f.write(b"\n\n")
    for name in ("empty.txt", "empty.jsonl", "empty.jsonl.gz", "blank.jsonl.bz2"):
        with pytest.raises(ValueError, match="empty corpus"):
            list(iter_documents([str(tmp_path / name)]))
    with pytest.raises(ValueError, match="empty corpus: source .*empty.jsonl.gz"):
        next(DataLoader(DataConfig(train=[str(tmp_path / "empty.jsonl.gz")], seq_len=8, batch_size=1)))
    with pytest.raises(ValueError, match="empty corpus: source .*empty.txt"):
        next(DataLoader(DataConfig(train=[str(tmp_path / "empty.txt")], seq_len=8, batch_size=1)))
    with pytest.raises(FileNotFoundError, match="holds no supported files"):
        (tmp_path / "void").mkdir()
        DataSource(str(tmp_path / "void"))
    with pytest.raises(ConfigError, match="data.train lists no sources"):
        from_dict(DataConfig, {"train": []})


def test_missing_text_field_names_file_key_row(tmp_path):
    jl = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"text": "ok"}, {"body": "no text here"}])
    with pytest.raises(ValueError) as e:
        list(iter_documents([jl]))
    assert "bad.jsonl" in str(e.value) and "'text'" in str(e.value) and "row 2" in str(e.value)
    import datasets

    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ValueError, match=r"ds.*row 0 has no text field 'text'"):
        list(iter_documents([str(tmp_path / "ds")]))


# ---- built-in corpus ------------------------------------------------------------------------------

def test_builtin_corpus_is_real_text_of_3mb():
    assert set(builtin_names()) >= {"kjv", "jargon", "devil", "pydoc"}
    assert (builtin_corpus_path() / "README.md").is_file()
    train = list(iter_documents(["builtin"]))
    data = b"".join(train)
    assert len(data) >= 3_000_000 and len(train) > 1000
    text = data.decode("utf-8")  # valid UTF-8
    printable = sum(c.isprintable() or c in "\n\t" for c in text) / len(text)
    assert printable > 0.99
    words = re.findall(r"[a-z]+", text.lower())
    common = sum(w in {"the", "and", "of", "to", "a", "in", "is", "that"} for w in words) / len(words)
    assert common > 0.15  # real English: these words are about a fifth of running text
    assert 200 < sum(map(len, train)) / len(train) < 6000


def test_builtin_heldout_split_is_fixed_and_disjoint():
    train = set(iter_documents(["builtin"]))
    valid = list(iter_documents(["builtin:valid"]))
    assert 20 < len(valid) and not (set(valid) & train)
    assert [p.name for p in builtin_files("builtin/kjv:valid")] == ["kjv.valid.jsonl.gz"]
    with pytest.raises(ValueError, match="no part 'nope'"):
        builtin_files("builtin/nope")
    got = [d for _, _, d in heldout_documents(DataSource("builtin"), 0.5)]
    assert got == valid  # builtin uses its fixed split, not the hash fraction


# ---- mixtures and held-out ------------------------------------------------------------------------

@pytest.fixture
def two_sources(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": f"a{i:04d}"} for i in range(300)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": f"b{i:04d}"} for i in range(300)])
    return a, b


def test_mixture_weights_and_determinism(two_sources):
    a, b = two_sources
    srcs = [DataSource(a), DataSource(b)]

    def draw(seed, n=2000):
        m = Mixture(srcs, [3.0, 1.0], seed=seed, heldout_fraction=0.0)
        return [next(m)[3] for _ in range(n)]

    x = draw(0)
    frac_a = sum(d.startswith(b"a") for d in x) / len(x)
    assert abs(frac_a - 0.75) < 0.04
    assert x == draw(0) and x != draw(1)
    # Documents of a source come in order and repeat by epoch.
    a_docs = [d for d in x if d.startswith(b"a")]
    assert a_docs[:300] == [f"a{i:04d}".encode() for i in range(300)] and a_docs[300] == b"a0000"


def test_hash_heldout_is_disjoint_and_complete(two_sources):
    a, _ = two_sources
    src = DataSource(a)
    stream = DocumentStream(src, heldout_fraction=0.2)
    train = set()
    while True:
        epoch, _, d = next(stream)
        if epoch:
            break
        train.add(d)
    held = {d for _, _, d in heldout_documents(src, 0.2)}
    assert 30 < len(held) < 90 and not (train & held) and len(train | held) == 300
    assert all(is_heldout(d, 0.2) for d in held)


def test_loader_never_serves_heldout_documents(two_sources):
    a, b = two_sources
    # shuffle_buffer=1: rows in packing order, so their concatenation is the document stream.
    cfg = DataConfig(train=[a, b], eval_fraction=0.2, seq_len=64, batch_size=4, shuffle_buffer=1, final_target="masked")
    loader = DataLoader(cfg)
    stream = torch.cat([next(loader)["ids"].flatten() for _ in range(60)])  # > 1 epoch of bytes
    served = {decode_bytes(d) for d in torch.tensor_split(stream, (stream == EOS_ID).nonzero().flatten() + 1)[:-1]}
    assert all(re.fullmatch(rb"[ab]\d{4}", d) for d in served)
    held = {d for s in (a, b) for _, _, d in heldout_documents(DataSource(s), 0.2)}
    assert held and not (served & held)
    assert len(served) == 600 - len(held)  # every training document was served
    ev = heldout_batches(cfg, max_rows=10**6)
    ev_docs = set(re.findall(rb"[ab]\d{4}", b"".join(decode_bytes(e["ids"].flatten()) for e in ev)))
    assert ev_docs == held
    # Each row's last target is masked (BytePacker, final_target="masked"); every other real byte
    # but a row's first is a target.
    rows = sum(int((e["ids"] != 0).any(dim=1).sum()) for e in ev)
    assert sum(int(e["mask"].sum()) for e in ev) == sum(len(d) + 2 for d in held) - rows


# ---- loader: batches, determinism, resume, ranks ---------------------------------------------------

@pytest.mark.parametrize("packing", ["patches", "bytes"])
def test_loader_batches_follow_conventions(packing):
    cfg = DataConfig(packing=packing, seq_len=32, batch_size=4, shuffle_buffer=4, max_bytes=None)
    loader = DataLoader(cfg, static_patches(3))
    for _ in range(3):
        b = next(loader)
        n = b["ids"].shape[1]
        assert b["ids"].dtype == torch.int64 and b["mask"].dtype == torch.bool and b["ids"].shape[0] == 4
        validate_patch_lengths(b["patch_lengths"], n)
        real = b["mask"]
        assert bool((b["targets"][real] > 0).all())
        if packing == "patches":
            assert b["patch_lengths"].shape[1] == 32
        else:
            assert n == 32
    truncated = DataLoader(DataConfig(packing="patches", seq_len=32, batch_size=2, max_bytes=40), static_patches(5))
    b = next(truncated)
    assert b["ids"].shape[1] == 40
    validate_patch_lengths(b["patch_lengths"], 40)


def test_documents_get_bos_and_eos(tmp_path):
    jl = write_jsonl(tmp_path / "d.jsonl", [{"text": "hello"}, {"text": "world"}])
    cfg = DataConfig(train=[jl], eval_fraction=0.0, seq_len=14, batch_size=1, shuffle_buffer=1)
    b = next(DataLoader(cfg))
    assert b["ids"][0].tolist() == [BOS_ID, *[c + 4 for c in b"hello"], EOS_ID,
                                    BOS_ID, *[c + 4 for c in b"world"], EOS_ID]


def test_loader_deterministic_and_exact_resume(two_sources):
    a, b = two_sources
    cfg = from_dict(DataConfig, {"train": [{"path": a, "weight": 2.0}, b], "seq_len": 16, "packing": "patches",
                                 "batch_size": 4, "shuffle_buffer": 5})
    fn = static_patches(4)
    first = DataLoader(cfg, fn, seed=7)
    for _ in range(7):
        next(first)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    expected = [next(first) for _ in range(6)]
    again = DataLoader(cfg, fn, seed=7)
    replay = [next(again) for _ in range(13)][7:]
    resumed = DataLoader(cfg, fn, seed=7)
    buf.seek(0)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    got = [next(resumed) for _ in range(6)]
    for e, r, g in zip(expected, replay, got):
        for k in e:
            assert torch.equal(e[k], r[k]) and torch.equal(e[k], g[k]), k
    other = DataLoader(cfg, fn, seed=8)
    with pytest.raises(ValueError, match="saved with seed=7, this loader has seed=8"):
        other.load_state_dict(first.state_dict())


def test_shifted_targets_resume_exactly(two_sources):
    """The fixed-K patch phase's rows (target_shift=K): targets are the bytes K ahead, and the
    loader state continues them exactly."""
    a, b = two_sources
    cfg = DataConfig(train=[a, b], seq_len=16, batch_size=2, shuffle_buffer=3)
    first = DataLoader(cfg, seed=1, target_shift=4)
    batch = next(first)
    assert torch.equal(batch["targets"][:, :-4], batch["ids"][:, 4:]) and bool(batch["mask"].all())
    state = first.state_dict()
    resumed = DataLoader(cfg, seed=1, target_shift=4)
    resumed.load_state_dict(state)
    for _ in range(3):
        x, y = next(first), next(resumed)
        assert all(torch.equal(x[k], y[k]) for k in x)
    with pytest.raises(ValueError, match="target_shift=4, this loader has target_shift=1"):
        DataLoader(cfg, seed=1).load_state_dict(state)


def test_rank_shares_equal_single_process_batch():
    cfg = DataConfig(packing="patches", seq_len=12, batch_size=6, shuffle_buffer=4)
    fn = static_patches(3)
    single = DataLoader(cfg, fn)
    ranks = [DataLoader(cfg, fn, rank=r, world_size=3) for r in range(3)]
    for _ in range(4):
        whole = next(single)
        parts = [next(r) for r in ranks]
        for k in whole:
            assert torch.equal(whole[k], torch.cat([p[k] for p in parts]))
        assert parts[0]["ids"].shape[0] == 2
    with pytest.raises(ValueError, match="does not split"):
        DataLoader(cfg, fn, rank=0, world_size=4)


class RecordingScores:
    """Entropies of 0 (one patch per document), recording the names the loader gives documents."""

    def __init__(self):
        self.names = []

    def entropies(self, ids, where="a document"):
        self.names.append(where)
        return torch.zeros(ids.numel())


def test_patcher_gets_documents_named_by_source_and_index(two_sources):
    a, _ = two_sources
    scores = RecordingScores()
    patcher = DocumentPatcher(Patcher(PatcherConfig(scheme="entropy", threshold=1.0)), scores=scores)
    cfg = DataConfig(train=[a], eval_fraction=0.0, packing="patches", seq_len=8, batch_size=2, shuffle_buffer=1)
    next(DataLoader(cfg, patcher))
    # Entropy patching: documents are patched in groups of PATCH_GROUP, in source order.
    assert scores.names[:3] == [f"source {a!r} document {i}" for i in range(3)]
    with pytest.raises(ValueError, match="packing 'patches'.*needs patch lengths"):
        DataLoader(cfg)


def test_limit_bytes_caps_each_epoch_and_resumes(tmp_path):
    jl = write_jsonl(tmp_path / "d.jsonl", [{"text": f"doc{i}" * 3} for i in range(20)])  # 12 bytes each
    stream = DocumentStream(DataSource(jl), 0.0, limit_bytes=30)
    got = [next(stream) for _ in range(7)]
    # the document that reaches 30 bytes is the epoch's last (whole documents)
    assert [(e, i) for e, i, _ in got] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
    resumed = DocumentStream(DataSource(jl), 0.0, 30, **{k: v for k, v in stream.state_dict().items()})
    assert next(resumed) == next(stream) == (2, 1, b"doc1" * 3)


def test_heldout_eval_set_builtin():
    cfg = DataConfig(seq_len=256, batch_size=8, eval_rows=20)
    ev = heldout_batches(cfg)
    assert [e["ids"].shape for e in ev] == [(8, 256), (8, 256), (4, 256)]  # eval_rows rows, in batches
    assert ev[0]["ids"][0, 0] == BOS_ID
    full = heldout_batches(cfg, static_patches(4), max_rows=10**6)
    for e in full:
        validate_patch_lengths(e["patch_lengths"], 256)
    valid_bytes = sum(len(d) + 2 for d in iter_documents(["builtin:valid"]))
    assert sum(int((e["ids"] != 0).sum()) for e in full) == valid_bytes  # every held-out byte, once


def test_data_config_from_dict():
    cfg = from_dict(DataConfig, {"train": ["builtin", {"path": "hf:org/name:cfg@train", "weight": 0.5,
                                                       "text_field": "content"}],
                                 "text_field": "body", "seq_len": 512, "packing": "patches"})
    assert cfg.train[0].path == "builtin" and cfg.train[1].weight == 0.5
    assert cfg.train[0].text_field == "body" and cfg.train[1].text_field == "content"  # a source's own wins
    with pytest.raises(ConfigError, match="nope"):
        from_dict(DataConfig, {"nope": 1})
    with pytest.raises(ConfigError, match="weight"):
        from_dict(DataConfig, {"train": [{"path": "builtin", "weight": -1}]})
    with pytest.raises(ConfigError, match="max_bytes"):
        from_dict(DataConfig, {"max_bytes": 64})  # only cuts patch-packed rows


@pytest.mark.parametrize("old, new", [("sources", "'data.train'"), ("heldout_fraction", "'data.eval_fraction'"),
                                      ("shuffle", "'data.shuffle_buffer'"), ("seed", "top-level 'seed'")])
def test_removed_data_keys_name_their_replacement(old, new):
    with pytest.raises(ConfigError, match=rf"'data\.{old}' in run.yaml is no longer read: it is now .*{re.escape(new)}"):
        train_config_from_dict({"data": {old: 1}}, source="run.yaml")
    with pytest.raises(ConfigError, match=r"'stream' in run.yaml is no longer read: it is now 'data'"):
        train_config_from_dict({"stream": {"sources": ["builtin"]}}, source="run.yaml")
    with pytest.raises(ConfigError, match=r"'data.sources' in --set data.sources=\[builtin\] is no longer read"):
        load_train_config("tiny", ["data.sources=[builtin]"])
