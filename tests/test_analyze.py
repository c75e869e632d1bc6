"""The main job end to end on the shipped toy models, and its input checks."""

from __future__ import annotations

import json

import pytest

from tl_moe.analyze import AnalyzeOptions, run_analysis
from tl_moe.zoo.registry import checkpoint_dir

SHIPPED = all((checkpoint_dir(name) / "metadata.json").exists() for name in ("toy/moe-16x2", "toy/dense"))


@pytest.mark.skipif(not SHIPPED, reason="toy checkpoints not shipped")
def test_analyze_writes_a_report_with_every_section(tmp_path):
    options = AnalyzeOptions(
        out=tmp_path / "report", max_tokens=4000, batch_size=8, probe_ks=(1, 4), min_examples=20
    )
    index = run_analysis(options)
    html = index.read_text()
    for title in ("k-sparse probing", "specialization", "Domain experts", "logit lens"):
        assert title.lower() in html.lower()
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    sections = results["sections"]
    assert {"probing", "specialization", "domains", "logit_lens"} <= set(sections)
    for name, value in sections["probing"]["metrics"].items():
        if "| k=" in name:
            assert 0.0 <= value <= 1.0
    assert (tmp_path / "report" / "figures" / "probing_f1_vs_k.png").exists()
    assert (tmp_path / "report" / "tables" / "probing_moe_units.parquet").exists()
    # A rerun resumes from the finished checkpoints and gives the same numbers.
    again = run_analysis(options)
    assert json.loads((again.parent / "results.json").read_text())["sections"] == sections


@pytest.mark.skipif(not SHIPPED, reason="toy checkpoints not shipped")
def test_analyze_refuses_a_dense_model(tmp_path):
    with pytest.raises(ValueError, match="dense"):
        run_analysis(AnalyzeOptions(model="toy/dense", out=tmp_path))


def test_analyze_rejects_unknown_analyses_and_tiny_budgets(tmp_path):
    with pytest.raises(ValueError, match="probing"):
        run_analysis(AnalyzeOptions(analyses=("probing", "vibes"), out=tmp_path))
    with pytest.raises(ValueError, match="max-tokens"):
        run_analysis(AnalyzeOptions(max_tokens=10, out=tmp_path))


@pytest.mark.skipif(not SHIPPED, reason="toy checkpoints not shipped")
def test_analyze_rejects_an_empty_corpus(tmp_path):
    corpus = tmp_path / "empty.jsonl"
    corpus.write_text('{"text": "", "domain": "a"}\n{"text": "", "domain": "b"}\n')
    with pytest.raises(ValueError, match="zero tokens|empty"):
        run_analysis(AnalyzeOptions(corpus=str(corpus), split="train", out=tmp_path / "r"))


def test_cli_reports_bad_input_without_a_traceback(capsys):
    from tl_moe.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "toy/moe-3x3"])
    assert exit_info.value.code == 2
    assert "Unknown toy model 'toy/moe-3x3'" in capsys.readouterr().err
