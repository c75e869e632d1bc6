"""Prompts and parsers that a small chat model can answer: one label line, one yes/no per excerpt."""

from __future__ import annotations

import hashlib

import pytest

from explain_fixtures import LoopbackServer, context, word_records
from tl_moe.errors import InputError
from tl_moe.explain.clients import OpenAIChatClient
from tl_moe.explain.examples import ExpertRecord
from tl_moe.explain.explainers import EXPLAIN_EXAMPLES, LMExplainer, explain_prompt, parse_label
from tl_moe.explain.runner import label_experts
from tl_moe.explain.scorers import DetectionScorer, FuzzingScorer, parse_verdicts
from tl_moe.explain.serving import servable_copy

pytest.importorskip("openai")


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("file names", "file names"),
        ('"double quotes"\n\nThe marked tokens are all quotes.', "double quotes"),
        ("**LaTeX commands.**", "LaTeX commands"),
        ("1. closing brackets", "closing brackets"),
        ("I/O calls", "I/O calls"),  # starts with "I" but is no refusal
        ('{"label": "the word cat"}', "the word cat"),
    ],
)
def test_a_label_line_is_read_leniently(answer, label):
    assert parse_label(answer) == label


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "I am not sure what this is.",
        "Sorry, these excerpts share nothing.",
        "optimization (like<< \">>python -'",  # an echoed excerpt with its marks
        "The output is:",  # an introduction to nothing
        "The component is a Python module that allows the user to compile and execute Python code",
        '{"name": "cats"}',  # JSON, but no label in it
    ],
)
def test_prose_refusals_and_echoes_are_malformed(answer):
    with pytest.raises(ValueError, match="malformed"):
        parse_label(answer)


def test_a_single_verdict_is_the_first_word():
    assert parse_verdicts("Yes.", 1) == ([1], None)
    assert parse_verdicts("no, the excerpt is about cats", 1) == ([0], None)
    assert parse_verdicts("[1]", 1) == ([1], None)
    for answer in ("Maybe", "The excerpt contains numbers.", ""):
        with pytest.raises(ValueError, match="malformed"):
            parse_verdicts(answer, 1)
    with pytest.raises(ValueError, match="malformed"):
        parse_verdicts("yes", 2)  # a list of verdicts is needed for more than one excerpt


def test_the_explain_prompt_marks_targets_and_shows_worked_examples():
    routed = context("cat", 0, True, "top")
    also = routed.with_marks([i in (1, 3) for i in range(len(routed.tokens))])  # a second routed token
    record = ExpertRecord(0, 0, (also,), (), (), lens_tokens=("purr",))
    messages = explain_prompt(record, mark="target")
    assert messages[0]["role"] == "system"
    assert [m["role"] for m in messages[1:-1]] == ["user", "assistant"] * len(EXPLAIN_EXAMPLES)
    assert [m["content"] for m in messages[2:-1:2]] == [a for *_, a in EXPLAIN_EXAMPLES]
    last = messages[-1]["content"]
    assert last.count("<<") == 1 and "<< cat>>" in last and "Marked tokens: ' cat'" in last
    assert "'purr'" in last and all("promotes in the output" in m["content"] for m in messages[1:-1:2])
    assert explain_prompt(record, mark="routed")[-1]["content"].count("<<") == 2
    assert len(explain_prompt(record, examples=False)) == 2
    without = explain_prompt(record, lens=False)  # no lens line, in the examples either
    assert not any("promotes" in m["content"] for m in without)


def test_an_answer_that_echoes_an_excerpt_is_malformed():
    class Echo:
        name = identity = "echo"

        def complete(self, messages, *, max_tokens=256):
            return "1. ' the a on'"  # the first excerpt's opening words, unmarked

    record = word_records(["cat", "dog"])[0]
    explanation = LMExplainer(Echo())(record)
    assert not explanation.ok and "echoed" in explanation.error

    class Lens(Echo):
        def complete(self, messages, *, max_tokens=256):
            return "The component promotes in the output: 'purr'"  # the prompt's lens line

    lensed = ExpertRecord(0, 0, record.explanation, (), (), lens_tokens=("purr",))
    assert "echoed" in LMExplainer(Lens())(lensed).error


@pytest.mark.parametrize("scorer", [DetectionScorer, FuzzingScorer])
def test_one_question_per_excerpt_through_a_loopback_server(scorer):
    words = ["cat", "dog", "fish"]
    records = word_records(words, n=4)
    with LoopbackServer() as server:
        client = OpenAIChatClient(server.url, "canned", max_retries=0)
        result = label_experts(
            records,
            LMExplainer(client),
            [scorer(client, chunk=1, max_tokens=4)],
            concurrency=2,
            progress=False,
        )
        questions = [r for r in server.requests if not r["messages"][0]["content"].startswith("You explain")]
    name = scorer.name
    assert (result.frame["label"] == [f"the word {w}" for w in words]).all()
    # the server says "Yes." to an excerpt holding the label's word: every detection positive and no
    # negative; every fuzzing item (true marks or not: the word is in each), of which half are positive
    assert result.frame[f"{name}_f1"].tolist() == pytest.approx([1.0 if name == "detection" else 2 / 3] * 3)
    assert (result.frame[f"{name}_shuffled_f1"] == 0.0).all()
    items = len(records[0].positives) + len(records[0].negatives) if name == "detection" else 8
    assert len(questions) == 2 * len(words) * items  # own label and shuffled label, one item a request
    assert all(q["max_tokens"] == 4 and len(q["messages"]) == 6 for q in questions)  # 2 worked examples
    assert all(q["messages"][-1]["content"].count("\nExcerpt: ") == 1 for q in questions)


def test_a_malformed_verdict_is_a_recorded_failure():
    class Prose:
        name = identity = "prose"

        def complete(self, messages, *, max_tokens=256):
            return "the word cat" if messages[0]["content"].startswith("You explain") else "It depends."

    result = label_experts(
        word_records(["cat", "dog"]),
        LMExplainer(Prose()),
        [DetectionScorer(Prose(), chunk=1)],
        progress=False,
    )
    assert result.frame["detection_error"].str.contains("malformed").all()  # recorded, not raised
    assert "detection_f1" not in result.frame or result.frame["detection_f1"].isna().all()


def test_servable_copy_refuses_other_files_and_keys_copies_by_content(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="gguf"):
        servable_copy(tmp_path / "missing.gguf", cache_dir=tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="gguf"):
        servable_copy(tmp_path / "weights.bin", cache_dir=tmp_path)
    import transformers

    import tl_moe.explain.serving as serving_module

    made = []

    def convert(path, out):  # stands in for the dequantize-and-save of a real GGUF file
        out.mkdir()
        (out / "config.json").write_text("{}")
        made.append(path)

    monkeypatch.setattr(serving_module, "_convert", convert)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"first")
    first = servable_copy(model, cache_dir=tmp_path / "cache")
    digest = hashlib.sha256(b"first").hexdigest()[:16]
    assert first.name == f"m-{digest}-transformers{transformers.__version__}"
    assert servable_copy(model, cache_dir=tmp_path / "cache") == first and len(made) == 1  # cached
    model.write_bytes(b"second")
    assert servable_copy(model, cache_dir=tmp_path / "cache") != first and len(made) == 2
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        [first.name, f"m-{hashlib.sha256(b'second').hexdigest()[:16]}-transformers{transformers.__version__}"]
    )  # no scratch directory left behind
