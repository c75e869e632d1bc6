"""A run's ``--min-documents`` (``Statistics.min_documents``) reaches every text that names the fewest
documents behind an interval: the section intros, the budget warnings, the re-weighting and steering
findings, and the re-weighting tests themselves (not only their wording)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from tl_moe.analysis import expert_reweighting
from tl_moe.analysis.reweighting import holm_adjusted
from tl_moe.pipeline.protocol import MIN_DOCUMENTS_MARK, section_intro
from tl_moe.pipeline.results.reweighting_findings import (
    estimate_text,
    steering_testability,
    untestable,
)
from tl_moe.pipeline.sections.associations import Associations
from tl_moe.pipeline.sections.drivers import Drivers
from tl_moe.pipeline.sections.explain import Explain
from tl_moe.pipeline.sections.reweighting import Reweighting


@pytest.mark.parametrize("analysis", [Drivers, Reweighting, Associations, Explain])
def test_each_intro_names_the_runs_min_documents(analysis):
    assert MIN_DOCUMENTS_MARK in analysis.intro
    default, other = section_intro(analysis()), section_intro(analysis(), 45)
    assert MIN_DOCUMENTS_MARK not in default and MIN_DOCUMENTS_MARK not in other
    assert "below 30 documents" in default or "least 30 report documents" in default
    assert ("below 45 documents" in other or "least 45 report documents" in other) and default != other


def _word_corpus(n_docs: int, words: int, domains=("a",)):
    import datasets

    return datasets.Dataset.from_dict(
        {
            "text": [" ".join(["w"] * words)] * n_docs,
            "domain": [domains[i % len(domains)] for i in range(n_docs)],
        }
    )


class _WordTokenizer:
    bos_token_id = 0

    def __call__(self, texts, **kwargs):
        if isinstance(texts, str):  # one document (the re-weighting windows)
            return {"input_ids": [1 + (hash(w) % 50) for w in texts.split()]}
        return {"input_ids": [[1 + (hash(w) % 50) for w in t.split()] for t in texts]}


def test_the_driver_budget_warning_names_the_runs_min_documents():
    from tl_moe.pipeline.validation import check_driver_budget

    corpus, tokenizer = _word_corpus(200, 30), _WordTokenizer()
    options = dict(seq_len=64, batch_size=4, max_tokens=20000, driver_tokens=5000)  # ~80 report documents
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough for the default: no warning
        budget = check_driver_budget(corpus, tokenizer, **options)
    least = budget.report + 1
    with pytest.warns(UserWarning, match=f"the drivers' intervals need {least} and"):
        check_driver_budget(corpus, tokenizer, interval_documents=least, **options)


def test_the_reweight_budget_warning_names_the_runs_min_documents():
    from tl_moe.pipeline.validation import check_reweight_budget

    corpus, tokenizer = _word_corpus(120, 30, ("a", "b")), _WordTokenizer()
    options = dict(seq_len=64, reweight_tokens=100000, domains=["a", "b"])
    with pytest.warns(UserWarning, match="fewer than 30 held-out documents"):
        counts = check_reweight_budget(corpus, tokenizer, **options)
    held_out = min(n for _, n in counts.values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every domain reaches a lowered minimum: no warning
        check_reweight_budget(corpus, tokenizer, interval_documents=held_out, **options)


def test_holm_tests_a_domain_by_the_runs_min_documents():
    """Planted: one domain with 40 held-out documents. With the default it is tested; with
    min_documents 45 it is not, and the reason names 45."""
    rng = np.random.default_rng(0)
    family = {"d": (rng.normal(0, 1, (3, 40)), np.ones(40))}
    tested = holm_adjusted(family, n_resamples=200).set_index("name").loc["d"]
    assert tested["unavailable"] == "" and np.isfinite(tested["ci low"])
    short = holm_adjusted(family, n_resamples=200, min_documents=45).set_index("name").loc["d"]
    assert "40 documents; a document-level interval needs 45" == short["unavailable"]
    assert np.isnan(short["ci low"])


def test_the_reweighting_texts_name_the_runs_min_documents():
    capacity = {"a": (90, 40), "b": (100, 50)}
    assert untestable(capacity, "re-weighting") == "" and steering_testability(capacity) == ""
    text = untestable(capacity, "re-weighting", 45)
    assert "a held-out interval needs 45 documents" in text and "a (90 documents in the split, 40" in text
    assert "45 held-out documents needed" in steering_testability(capacity, 45)
    row = pd.Series(
        {"loss change": 0.01, "loss change ci low": np.nan, "loss change ci high": np.nan, "documents": 40}
    )
    assert "a document-level interval needs 45" in estimate_text(row, "loss change", 45)


def test_the_testable_groups_are_those_reaching_the_runs_min_documents():
    from tl_moe.analysis.expert_reweighting import held_out_capacity

    capacity = held_out_capacity(["a"] * 100 + ["b"] * 90 + ["c"] * 60)
    held = {g: n for g, (_, n) in capacity.items()}
    for least in (20, 30, max(held.values()), max(held.values()) + 1):
        expected = [g for g in ("a", "b", "c") if held[g] >= least]  # most documents first
        assert expert_reweighting.testable_groups(capacity, least) == expected
    assert expert_reweighting.testable_groups(capacity) == [g for g in ("a", "b", "c") if held[g] >= 30]


def test_the_readme_drivers_header_names_the_runs_min_documents():
    import json
    from pathlib import Path

    import readme_results

    results = json.loads((Path(__file__).parents[1] / "docs/results/toy_drivers.json").read_text())
    assert "fewer than 30 documents" in readme_results.drivers_markdown(results, "x.json")
    results["metadata"]["options"]["min_documents"] = 45
    text = readme_results.drivers_markdown(results, "x.json")
    assert "fewer than 45 documents" in text and "fewer than 30 documents" not in text
