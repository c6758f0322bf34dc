"""``bltkit demo``: the quick demo end to end (about a minute on 2 CPU cores), and its config, data
and output-directory handling in isolation."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bltkit import cli
from bltkit import config as cfgio
from bltkit.config import ConfigError, CONFIG_ROOT
from bltkit.demo.config import DemoConfig, load_demo_config, shipped_name
from bltkit.demo.data import heldout_documents, use_data, utf8_prefix
from bltkit.demo.runner import prepare_out

ROOT = Path(__file__).resolve().parent.parent
# The end-to-end tests share one quick demo run (a module fixture): under pytest-xdist keep them
# on one worker (--dist loadfile or loadgroup), or each worker would run the demo again.
demo_group = pytest.mark.xdist_group("bltkit-demo")


# ---- the quick demo, end to end ------------------------------------------------------------------

@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    r = subprocess.run([sys.executable, "-m", "bltkit.cli", "demo", "--quick", "--device", "cpu", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path_factory.mktemp("cwd"))
    assert r.returncode == 0, r.stderr[-4000:]
    return out, r.stdout, json.loads((out / "demo.json").read_text())


@pytest.mark.slow
@demo_group
def test_quick_demo_prints_table_patches_and_generation(quick_demo):
    out, stdout, rec = quick_demo
    cfg, _ = load_demo_config("quick")
    names = [v.name for v in cfg.compare.variants]
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert step in stdout
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert "held-out bpb" in table[0] and "training FLOPs" in table[0] and "mean patch length" in table[0]
    assert [line.split("|")[1].strip() for line in table[1:]] == names  # one row a variant, in order
    for v in rec["variants"]:
        assert f"{v['heldout_bpb']:.4f}" in next(line for line in table if f"| {v['name']} |" in line)
    sample = rec["generation"]["samples"][0]
    assert f"[{sample['prompt']}]{sample['text']}" in stdout
    assert rec["patches"]["view"].splitlines()[0] in stdout


@pytest.mark.slow
@demo_group
def test_quick_demo_variants_are_matched_trained_and_distinct(quick_demo):
    out, _, rec = quick_demo
    budget = rec["budget"]["value"]
    kinds = {v["name"]: v for v in rec["variants"]}
    assert set(kinds) == {"blt-entropy", "patch-k4", "bytes"}
    for v in rec["variants"]:
        assert abs(v["training_flops"] - budget) / budget < 0.1, (v["name"], v["training_flops"], budget)
        first = v["curve"][0]["bpb"]
        assert math.isfinite(v["heldout_bpb"]) and v["heldout_bpb"] < first, (v["name"], first, v["heldout_bpb"])
    # K = 4 for 2/3 of the bytes, then bytes: about 2 bytes a position; the baseline exactly 1
    assert kinds["bytes"]["mean_patch_length"] == 1.0
    assert 1.5 < kinds["patch-k4"]["mean_patch_length"] < 2.5
    assert [p["name"] for p in kinds["patch-k4"]["phases"]] == ["patch", "byte"]
    em = rec["entropy_model"]
    assert abs(em["calibrated_mean_patch_length"] - em["target_mean_patch_length"]) < 0.5
    assert 2.5 < kinds["blt-entropy"]["mean_patch_length"] < 7  # patches near the calibrated 4.5
    # the entropy model ran over the data once; the BLT trained from those entropies
    assert em["precomputed"] == str(out / "_entropy_model" / "entropies") and em["precomputed_shards_computed"] >= 1
    assert cfgio.read_yaml(out / "blt-entropy" / "config.yaml")["patcher"]["precomputed"] == em["precomputed"]


@pytest.mark.slow
@demo_group
def test_quick_demo_writes_bundles_report_and_pictures(quick_demo):
    import bltkit

    out, _, rec = quick_demo
    report = (out / "report.md").read_text()
    for png in ("bpb_vs_flops.png", "entropy_patches.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in report
    for name in ("blt-entropy", "patch-k4", "bytes"):
        assert f"| {name} |" in report
        assert (out / name / "bundle.yaml").is_file() and (out / name / "metrics.jsonl").is_file()
    assert json.loads((out / "results.json").read_text())["variants"][0]["name"] == "blt-entropy"

    # The BLT bundle patches text the way the demo showed it (its own entropy model and threshold).
    lm = bltkit.load(out / "blt-entropy", device="cpu")
    shown = rec["patches"]
    assert sum(shown["patch_lengths"]) == len(shown["text"].encode()) == len(shown["entropies"])
    assert lm.patch(shown["text"]).lengths[1:] == shown["patch_lengths"]
    # The generated text is the bundle's: the same call gives the same bytes.
    g = rec["generation"]
    s = g["samples"][0]
    again = lm.generate(s["prompt"], max_new_bytes=s["new_bytes"], temperature=g["temperature"], top_k=g["top_k"],
                        seed=g["seed"])
    assert again == s["text"] and s["new_bytes"] > 0
    for name in ("patch-k4", "bytes"):  # the baselines are bundles too: byte LMs that generate
        h = bltkit.load(out / name, device="cpu")
        g = h.generate("And ", max_new_bytes=4, details=True)
        assert h.kind == "bytelm" and g.new_ids >= 1
        assert g.text == h.generate("And ", max_new_bytes=4, use_cache=False)


@pytest.mark.slow
@demo_group
def test_demo_refuses_to_overwrite_without_asking(quick_demo, capsys):
    out, _, _ = quick_demo
    assert cli.main(["demo", "--quick", "--out", str(out)]) == 2
    assert str(out) in capsys.readouterr().err


# ---- config, data and output handling -----------------------------------------------------------

def test_shipped_configs_compare_the_three_methods_at_a_flop_budget():
    for name in ("cpu", "quick", "gpu"):
        cfg, path = load_demo_config(name)
        assert path == CONFIG_ROOT / "demo" / f"{name}.yaml"
        assert cfg.compare.budget.kind == "flops"
        by_kind = {(v.kind, v.patch_size, round(v.patch_fraction, 2)) for v in cfg.compare.variants}
        assert ("bytelm", 4, 0.67) in by_kind and ("bytelm", 1, 0.0) in by_kind, name
        assert cfg.entropy_variant() == "blt-entropy"
        assert cfg.compare.entropy is not None and cfg.compare.entropy.target_mean_patch_length == 4.5


def test_shipped_name_picks_quick_gpu_or_cpu():
    assert shipped_name(quick=True, cuda=True) == "quick"
    assert shipped_name(quick=False, cuda=True) == "gpu"
    assert shipped_name(quick=False, cuda=False) == "cpu"


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text((CONFIG_ROOT / "demo" / "quick.yaml").read_text() + "show_me: true\n")
    with pytest.raises(ConfigError, match=r"show_me.*mine\.yaml"):
        load_demo_config(p)
    with pytest.raises(ConfigError, match=r"show\.colour"):
        load_demo_config("quick", ["show.colour=red"])


def test_a_demo_without_an_entropy_blt_is_refused():
    with pytest.raises(ValueError, match="entropy patches"):
        load_demo_config("quick", ["compare.variants=[{name: bytes, kind: bytelm, model: tiny}]"])
    cfg, _ = load_demo_config("quick")
    cfg.compare.variants = [v for v in cfg.compare.variants if v.kind == "bytelm"]
    with pytest.raises(ValueError, match="blt-entropy|entropy patches"):
        DemoConfig.validate(cfg)


def test_cli_errors_are_one_line_before_any_training(tmp_path, capsys):
    missing = tmp_path / "no_such_corpus"
    assert cli.main(["demo", "--quick", "--data", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert cli.main(["demo", "--eval", "x.jsonl", "--out", str(tmp_path / "o")]) == 2
    assert "--eval goes with --data" in capsys.readouterr().err
    assert cli.main(["demo", "--quick", "--threads", "0", "--out", str(tmp_path / "o")]) == 2


def test_help_says_what_it_does_and_how_to_use_your_data():
    r = subprocess.run([sys.executable, "-m", "bltkit.cli", "demo", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for words in ("--data PATH", "--quick", "--out", "entropy model", "fixed-K", "byte-level baseline", "GPU"):
        assert words in r.stdout, words


def _write_jsonl(path: Path, docs: list[str]) -> None:
    path.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))


def test_use_data_points_every_run_at_your_files_and_holds_out_by_hash(tmp_path):
    from bltkit.compare.runner import variant_train_config
    from bltkit.data.sources import is_heldout

    docs = [f"document number {i}: " + "words and more words " * (i % 7 + 1) for i in range(80)]
    f = tmp_path / "mine.jsonl"
    _write_jsonl(f, docs)
    cfg, path = load_demo_config("quick", ["compare.entropy.train.data={seq_len: 64}"])
    use_data(cfg, [str(f)], text_field="body")
    for v in cfg.compare.variants:
        tc = variant_train_config(cfg.compare, v, str(path))
        assert [(s.path, s.text_field) for s in tc.data.train] == [(str(f), "body")] and tc.data.eval == []
    assert cfg.compare.entropy.train["data"]["train"] == [str(f)]
    held = heldout_documents(cfg.compare.base["data"], 1000)
    expected = [d.encode() for d in docs if is_heldout(d.encode(), tc.data.eval_fraction)]
    assert held == expected and 0 < len(held) < len(docs)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        use_data(cfg, [str(tmp_path / "nope.jsonl")])


def test_explicit_eval_files_are_the_held_out_text(tmp_path):
    train, valid = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    _write_jsonl(train, ["a training document"] * 5)
    _write_jsonl(valid, ["", "the first held-out one", "the second"])
    cfg, _ = load_demo_config("quick")
    use_data(cfg, [str(train)], [str(valid)], text_field="body")
    assert heldout_documents(cfg.compare.base["data"], 2) == [b"the first held-out one", b"the second"]


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=80), st.integers(min_value=1, max_value=64))
def test_utf8_prefix_is_a_whole_character_prefix(text, n):
    doc = text.encode("utf-8")
    got = utf8_prefix(doc, n)
    raw = got.encode("utf-8")
    assert doc.startswith(raw) and len(raw) <= n
    assert len(raw) >= min(n, len(doc)) - 3 or " " in got  # cut only at a character, or back to a space


def test_prepare_out_replaces_only_demo_output(tmp_path):
    out = tmp_path / "demo"
    prepare_out(out, overwrite=False)  # new: created
    (out / "demo.json").write_text("{}")
    with pytest.raises(ValueError, match="--overwrite"):
        prepare_out(out, overwrite=False)
    prepare_out(out, overwrite=True)
    assert out.is_dir() and not any(out.iterdir())
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.tex").write_text("precious")
    with pytest.raises(ValueError, match="not a demo's output"):
        prepare_out(other, overwrite=True)
    assert (other / "chapter1.tex").read_text() == "precious"


def test_patch_view_is_the_library_call_shown_as_bltkit_patch_shows_it(tmp_path, capsys):
    """The demo patches through ``bltkit.load(...).patch`` and shows the text view of ``bltkit patch
    --model BUNDLE``: the same lengths, entropies and lines for one tiny bundle."""
    import torch

    import bltkit
    from bltkit.inference.api import Handle
    from bltkit.model import ByteLatentTransformer, load_blt_config
    from bltkit.patching.config import PatcherConfig
    from bltkit.demo.showcase import patch_view
    from entropy_model.model import EntropyModel, load_entropy_config

    torch.manual_seed(3)
    blt = ByteLatentTransformer(load_blt_config("tiny", ["hash.vocab=257"]))
    em = EntropyModel(load_entropy_config("tiny", ["dim=32", "n_heads=2"]))
    Handle(blt, PatcherConfig(scheme="entropy", threshold=5.5, max_patch_length=3), em, device="cpu").save(tmp_path / "b")
    text = "Ünïcode and\tbytes"
    pv = patch_view(bltkit.load(tmp_path / "b", device="cpu"), text)
    assert cli.main(["patch", "--model", str(tmp_path / "b"), "--json", "--", text]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert pv.patch_lengths == shown["patch_lengths"] and max(pv.patch_lengths) <= 3
    assert pv.entropies == pytest.approx(shown["entropies"], abs=2e-4)
    assert len(pv.entropies) == sum(pv.patch_lengths) == len(text.encode())
    assert cli.main(["patch", "--model", str(tmp_path / "b"), "--", text]) == 0
    assert pv.view == capsys.readouterr().out.rstrip("\n")
    assert pv.view.splitlines()[1] == "|" + "|".join(
        text.encode()[sum(pv.patch_lengths[:i]):sum(pv.patch_lengths[:i + 1])].decode("utf-8", "backslashreplace")
        .replace("\t", "\\t") for i in range(len(pv.patch_lengths))) + "|"
