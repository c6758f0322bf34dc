"""lm-evaluation-harness on bltkit bundles, offline: the ``bltkit`` model's loglikelihood,
is_greedy, loglikelihood_rolling and generate_until against bltkit's own scores and generation,
local YAML tasks end to end (Python, ``bltkit eval --tasks`` and the harness's registry), bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from lm_eval.api.instance import Instance

import bltkit
from bltkit.cli import main as cli
from bltkit.data.vocab import OFFSET
from bltkit.evaluation.bpb import evaluate_sources
from bltkit.evaluation.lm import BltkitLM
from bltkit.evaluation.tasks import run_tasks
from bltkit.inference.scoring import LN2, score_spans
from test_eval import make_bundles

pytestmark = pytest.mark.usefixtures("one_thread")

PRINTABLE = range(32 + OFFSET, 127 + OFFSET)


def printable_only(handle):
    """Zero the output rows of every id but printable ASCII: those logits are 0, so the argmax
    (greedy generation) is always a printable byte (some printable logit is positive) and never
    EOS, which keeps generated text valid UTF-8 for the string-based harness."""
    out = handle.model.local_decoder.output if handle.kind == "blt" else handle.model.output
    keep = torch.zeros(out.weight.shape[0], dtype=torch.bool)
    keep[list(PRINTABLE)] = True
    with torch.no_grad():
        out.weight[~keep] = 0
    return handle


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return make_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="module")
def handles(bundles):
    return {k: printable_only(bltkit.load(d, device="cpu")) for k, d in bundles.items()}


def ll(context, continuation):
    return Instance("loglikelihood", {}, (context, continuation), 0)


def rolling(text):
    return Instance("loglikelihood_rolling", {}, (text,), 0)


def gen(context, **kw):
    return Instance("generate_until", {}, (context, kw), 0)


PAIRS = [("Question: what is two and two?\nAnswer:", " four"), ("Question: what is two and two?\nAnswer:", " five"),
         ("Question: what is two and two?\nAnswer:", " fourteen"), ("", "no context at all"),
         ("Grüße aus", " Köln"), ("The cat", " sat")]


@pytest.mark.parametrize("kind", ["blt", "bytelm", "entropy"])
def test_loglikelihood_is_the_sum_of_bltkits_per_byte_scores(handles, kind):
    h = handles[kind]
    lm = BltkitLM(h, batch_size=2, progress=False)
    got = lm.loglikelihood([ll(c, k) for c, k in PAIRS])
    for (c, k), (logp, _) in zip(PAIRS, got):
        surprisal = h.score(c + k).surprisal  # bits of every byte of the whole string
        expect = -sum(surprisal[len(c.encode()):]) * LN2
        assert logp == pytest.approx(expect, abs=1e-5)


@pytest.mark.parametrize("kind", ["blt", "bytelm"])
def test_is_greedy_agrees_with_greedy_generation(handles, kind):
    h = handles[kind]
    lm = BltkitLM(h, progress=False)
    for context in ["Question: what is two and two?\nAnswer:", "The cat", ""]:
        g = h.generate(context, max_new_bytes=10)  # greedy, cached, patched as it goes
        assert len(g.encode()) == 10
        other = chr(ord(g[-1]) % 94 + 33) if g[-1] != "~" else "!"  # any other printable byte
        first = chr(ord(g[0]) % 94 + 33) if g[0] != "~" else "!"
        res = lm.loglikelihood([ll(context, g), ll(context, g[:-1] + other), ll(context, first + g[1:]),
                                ll(context, g[:4])])
        assert [r[1] for r in res] == [True, False, False, True]


@pytest.mark.parametrize("kind", ["blt", "entropy"])
def test_loglikelihood_rolling_equals_score(handles, kind):
    h = handles[kind]
    texts = ["A whole text, scored from BOS.", "Grüße", "x"]
    lm = BltkitLM(h, progress=False)
    got = lm.loglikelihood_rolling([rolling(t) for t in texts])
    for t, logp in zip(texts, got):
        assert logp == pytest.approx(-sum(h.score(t).surprisal) * LN2, abs=1e-5)
    # Longer than the window: scored in windows, by the documented rule.
    long = "A text longer than the window of this model, scored in overlapping windows. " * 2
    short = BltkitLM(h, window=40, overlap=10, progress=False)
    (logp,) = short.loglikelihood_rolling([rolling(long)])
    (windowed,) = score_spans(h, [long.encode()], window=40, overlap=10)
    assert logp == pytest.approx(-windowed.total_nats, abs=1e-6)
    if kind == "blt":  # (the entropy bundle sees 6 bytes back: windows cut nothing it sees)
        assert logp != pytest.approx(-sum(h.score(long).surprisal) * LN2, abs=1e-3)


def test_generate_until_equals_generate(handles):
    h = handles["blt"]
    lm = BltkitLM(h, batch_size=2, progress=False)
    contexts = ["Question: what is two and two?\nAnswer:", "The cat", "Once upon a time", ""]
    free = [h.generate(c, max_new_bytes=16) for c in contexts]
    stops = [[free[0][5:7]], [free[1][3], "zz"], ["QQQ"], [free[3][8:10]]]  # stop strings that occur in the output, and one that does not
    reqs = [gen(c, until=s, max_gen_toks=16) for c, s in zip(contexts, stops)]
    reqs.append(gen(contexts[1], until="\n\n", max_gen_toks=5, do_sample=False))  # other settings, one string
    got = lm.generate_until(reqs)
    expect = [h.generate(c, max_new_bytes=16, stop=s) for c, s in zip(contexts, stops)]
    expect.append(h.generate(contexts[1], max_new_bytes=5, stop="\n\n"))
    assert got == expect
    assert len(got[0]) < 16 and got[2] == free[2]  # a stop cut the first; the absent one cut nothing


def test_generate_until_keeps_the_end_of_a_long_prompt(bundles):
    h = printable_only(bltkit.load(bundles["bytelm"], device="cpu", max_context=48))
    lm = BltkitLM(h, progress=False)
    prompt = "A prompt far longer than this handle's context of 48 bytes, so it is cut from the left."
    (got,) = lm.generate_until([gen(prompt, max_gen_toks=8)])
    assert got == h.generate(prompt[-(48 - 1 - 8):], max_new_bytes=8)
    with pytest.raises(ValueError, match="max_gen_toks 60 leaves no room"):
        lm.generate_until([gen(prompt, max_gen_toks=60)])


# ---- local tasks end to end ---------------------------------------------------------------------
QA = [{"question": "What is two and two?", "choices": [" four", " five", " fourteen"], "answer": 0},
      {"question": "Which is a colour?", "choices": [" red", " run", " ran"], "answer": 0},
      {"question": "Grüße aus?", "choices": [" Köln", " Bonn"], "answer": 1}]
DOCS = ["A held-out page of text.", "Another page, with Grüße.", "Third and last page of this tiny corpus."]


def write_tasks(root):
    d = root / "tasks"
    d.mkdir()
    (d / "qa.json").write_text(json.dumps(QA, ensure_ascii=False), encoding="utf-8")
    (d / "pages.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in DOCS),
                                   encoding="utf-8")
    common = f"dataset_path: json\ntest_split: test\n"
    (d / "tiny_qa.yaml").write_text(
        f"task: tiny_qa\n{common}dataset_kwargs:\n  data_files:\n    test: {d / 'qa.json'}\n"
        "output_type: multiple_choice\ndoc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{answer}}\"\ntarget_delimiter: \"\"\n"
        "metric_list:\n  - metric: acc\n")
    (d / "tiny_pages.yaml").write_text(
        f"task: tiny_pages\n{common}dataset_kwargs:\n  data_files:\n    test: {d / 'pages.jsonl'}\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
        "metric_list:\n  - metric: bits_per_byte\n")
    (d / "tiny_gen.yaml").write_text(
        f"task: tiny_gen\n{common}dataset_kwargs:\n  data_files:\n    test: {d / 'qa.json'}\n"
        "output_type: generate_until\ndoc_to_text: \"Q: {{question}}\\nA:\"\ndoc_to_target: \"{{choices[answer]}}\"\n"
        "generation_kwargs:\n  until: [\"\\n\", \"e\"]\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    return d


def test_local_tasks_run_end_to_end(handles, bundles, tmp_path):
    h = handles["blt"]
    d = write_tasks(tmp_path)
    res = run_tasks(h, ["tiny_qa", "tiny_pages", "tiny_gen"], include_path=str(d), builtin_tasks=False,
                    bootstrap_iters=0, progress=False, batch_size=4)["results"]
    # Multiple choice: accuracy from bltkit's own log-likelihoods of each choice.
    lm = BltkitLM(h, progress=False)
    correct = []
    for q in QA:
        lls = [x for x, _ in lm.loglikelihood([ll(f"Question: {q['question']}\nAnswer:", c) for c in q["choices"]])]
        correct.append(int(np.argmax(lls)) == q["answer"])
    assert res["tiny_qa"]["acc,none"] == pytest.approx(np.mean(correct))
    # Rolling log-likelihood: the harness's bits per byte is bltkit eval's on the same documents.
    src = tmp_path / "pages.jsonl"
    src.write_text((d / "pages.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    assert res["tiny_pages"]["bits_per_byte,none"] == pytest.approx(
        evaluate_sources(h, [str(src)]).overall.bits_per_byte, rel=1e-6)
    # Generation: exact match of bltkit's greedy output, cut at the task's stop strings.
    outs = [h.generate(f"Q: {q['question']}\nA:", max_new_bytes=6, stop=["\n", "e"]) for q in QA]
    expect = np.mean([o.strip() == q["choices"][q["answer"]].strip() or o == q["choices"][q["answer"]]
                      for o, q in zip(outs, QA)])
    assert res["tiny_gen"]["exact_match,none"] == pytest.approx(expect)


def test_cli_eval_tasks_and_data(bundles, tmp_path, capsys):
    d = write_tasks(tmp_path)
    src = tmp_path / "pages.jsonl"
    src.write_text((d / "pages.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    args = ["eval", "--model", str(bundles["entropy"]), str(src), "--tasks", "tiny_qa,tiny_pages",
            "--include-path", str(d), "--no-builtin-tasks", "--no-progress"]
    assert cli(args + ["--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert set(rec["tasks"]["results"]) == {"tiny_qa", "tiny_pages"}
    assert rec["tasks"]["results"]["tiny_pages"]["bits_per_byte,none"] == pytest.approx(
        rec["bits_per_byte"]["overall"]["bits_per_byte"], rel=1e-6)
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "tiny_qa" in out and "acc" in out and "bits/byte" in out


def test_the_harness_finds_bltkit_by_name(bundles, tmp_path):
    """What the harness's own command line does with ``--model bltkit --model_args pretrained=DIR``."""
    from lm_eval import simple_evaluate
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    assert get_model("bltkit") is BltkitLM
    d = write_tasks(tmp_path)
    res = simple_evaluate(model="bltkit", model_args=f"pretrained={bundles['entropy']},window=64",
                          tasks=["tiny_pages"], batch_size=2, device="cpu", bootstrap_iters=0,
                          task_manager=TaskManager(include_path=str(d), include_defaults=False))
    h = bltkit.load(bundles["entropy"], device="cpu")
    assert res["results"]["tiny_pages"]["bits_per_byte,none"] == pytest.approx(
        sum(sum(h.score(t).surprisal) for t in DOCS) / sum(len(t.encode()) for t in DOCS), rel=1e-5)
    r = subprocess.run([sys.executable, "-m", "bltkit.evaluation", "run", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--model_args" in r.stdout


# ---- bad input ----------------------------------------------------------------------------------
def test_unknown_task_and_missing_folder(bundles, tmp_path, capsys):
    d = write_tasks(tmp_path)
    base = ["eval", "--model", str(bundles["entropy"]), "--no-builtin-tasks", "--no-progress"]
    assert cli(base + ["--tasks", "tiny_qa,hellaswagg", "--include-path", str(d)]) == 2
    err = capsys.readouterr().err
    assert "unknown task(s) ['hellaswagg']" in err and "Traceback" not in err
    assert cli(base + ["--tasks", "tiny_qa", "--include-path", str(tmp_path / "nope")]) == 2
    assert "--include-path folder not found" in capsys.readouterr().err
    assert cli(base + ["--tasks", "tiny_qa"]) == 2
    assert "--no-builtin-tasks needs --include-path" in capsys.readouterr().err
    assert cli(["eval", "--model", str(bundles["entropy"]), "--include-path", str(d), "builtin:valid"]) == 2
    assert "needs --tasks" in capsys.readouterr().err


def test_tasks_without_the_extra_say_which_to_install(bundles, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if lm-eval were not installed
    assert cli(["eval", "--model", str(bundles["entropy"]), "--tasks", "hellaswag"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "bltkit[eval]"' in err and len(err.strip().splitlines()) == 1


def test_bad_requests_and_arguments(handles, bundles):
    lm = BltkitLM(handles["entropy"], progress=False)
    with pytest.raises(ValueError, match="request 1: the continuation is empty"):
        lm.loglikelihood([ll("a", "b"), ll("context", "")])
    with pytest.raises(ValueError, match="loglikelihood_rolling request 0: the text is empty"):
        lm.loglikelihood_rolling([rolling("")])
    with pytest.raises(ValueError, match=r"unknown generation arguments \['num_beams'\]"):
        lm.generate_until([gen("x", until=["\n"], num_beams=4)])
    with pytest.raises(ValueError, match="stop strings must be non-empty"):
        lm.generate_until([gen("x", until=[""])])
    with pytest.raises(ValueError, match=r"unknown bltkit model arguments \['tokenizer'\]"):
        BltkitLM(handles["entropy"], tokenizer="gpt2")
    with pytest.raises(ValueError, match="needs pretrained=BUNDLE_DIR"):
        BltkitLM()
    with pytest.raises(ValueError, match="batch_size must be an integer, got 'big'"):
        BltkitLM(handles["entropy"], batch_size="big")
    with pytest.raises(FileNotFoundError, match="is not a bundle"):
        BltkitLM(str(bundles["blt"] / "entropy_model"))  # an entropy model directory, not a bundle
