"""The main job end to end on the shipped toy models: the numbers it recorded, resume, input checks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tl_moe.errors import InputError
from tl_moe.pipeline import RunOptions, run
from tl_moe.zoo.registry import checkpoint_dir

SHIPPED = all((checkpoint_dir(name) / "metadata.json").exists() for name in ("toy/moe-16x2", "toy/dense"))
FIXTURE = Path(__file__).parent / "fixtures" / "analyze_toy_zoo"
# The settings the fixture was produced with.
FIXTURE_OPTIONS = dict(max_tokens=4000, batch_size=8, probe_ks=(1, 4), min_examples=20, progress=False)


@pytest.fixture(scope="module")
def family_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    # 4k tokens reach 16 documents: too few for the held-out protocol (reported as unavailable), so
    # the untrained null's pass would be wasted.
    return run(RunOptions(out=out, sparsity_family=True, skip_untrained_null=True, **FIXTURE_OPTIONS)), out


WRITE_FIXTURE = os.environ.get("TL_MOE_WRITE_FIXTURES") == "1"


def _write_fixture(out: Path) -> None:
    """Record this run as the fixture (``TL_MOE_WRITE_FIXTURES=1``; only when a change of numbers is meant)."""
    shutil.rmtree(FIXTURE, ignore_errors=True)
    FIXTURE.mkdir(parents=True)
    results = json.loads((out / "results.json").read_text())
    (FIXTURE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for section in results["sections"].values():
        for table in section["tables"]:
            shutil.copy(out / "tables" / f"{table}.parquet", FIXTURE / f"{table}.parquet")


@pytest.mark.skipif(not SHIPPED, reason="toy checkpoints not shipped")
def test_the_pipeline_writes_the_numbers_it_recorded(family_run):
    """Every metric and every table of the default run and of --sparsity-family, field by field,
    against the run recorded in tests/fixtures on the shipped zoo (regenerate it with
    ``TL_MOE_WRITE_FIXTURES=1 pytest tests/test_analyze.py`` only when a change of numbers is meant,
    e.g. a retrained zoo). Sections and tables may only be added to."""
    results, out = family_run
    if WRITE_FIXTURE:
        _write_fixture(out)
    before = json.loads((FIXTURE / "results.json").read_text())
    after = json.loads((out / "results.json").read_text())
    assert set(after["sections"]) == set(before["sections"])
    for key, section in before["sections"].items():
        assert after["sections"][key]["metrics"] == section["metrics"], key
        assert set(section["tables"]) <= set(after["sections"][key]["tables"]), key
        for table in section["tables"]:
            expected = pd.read_parquet(FIXTURE / f"{table}.parquet")
            got = pd.read_parquet(out / "tables" / f"{table}.parquet")
            pd.testing.assert_frame_equal(got[expected.columns], expected)
    assert after["metadata"]["tokens_by_domain"] == before["metadata"]["tokens_by_domain"]
    assert after["metadata"]["versions"]["transformer-lens"] is not None
    probing = after["sections"]["probing"]
    assert any("held-out protocol unavailable" in str(v) for v in probing["metrics"].values())
    assert {r["comparison"] for r in probing["comparisons"] if r["protocol"] == "held_out"} >= {
        "moe_vs_dense_on_routed_tokens"
    }
    assert all(
        r["interval_available"] is False for r in probing["comparisons"] if r["protocol"] == "held_out"
    )
    assert {r["comparison"] for r in probing["comparisons"] if r["protocol"] == "paper"} == {
        "moe_vs_dense",
        "moe_vs_matched_subsets",
    }
    # The family's held-out records: one per member and comparison, unavailable (16 documents), with why.
    family = after["sections"]["sparsity"]["comparisons"]
    assert {r["model"] for r in family} == {"toy/moe-4x2", "toy/moe-8x2", "toy/moe-16x2", "toy/moe-32x2"}
    assert all(r["estimate"] is None and r["interval_unavailable_reason"] for r in family)


@pytest.mark.skipif(not SHIPPED, reason="toy checkpoints not shipped")
def test_results_are_typed_and_the_report_has_every_section(family_run):
    results, out = family_run
    assert list(results.results) == ["probing", "sparsity", "specialization", "domains", "logit_lens"]
    probing = results["probing"]
    assert {"layer", "expert"} <= set(probing.moe_units.columns)
    assert probing.moe_units["layer"].dtype.kind == "i" and probing.moe_units["expert"].dtype.kind == "i"
    html = (out / "index.html").read_text().lower()
    for title in ("k-sparse probing", "specialization", "domain experts", "logit lens", "routing sparsity"):
        assert title in html
    assert (out / "figures" / "probing_f1_vs_k.png").exists()
    assert (out / "tables" / "probing_moe_units.parquet").exists()


@pytest.mark.skipif(not SHIPPED, reason="toy checkpoints not shipped")
def test_a_rerun_resumes_from_the_checkpoints_with_the_same_numbers(tmp_path, monkeypatch):
    options = RunOptions(
        out=tmp_path, analyses=("domains", "specialization"), keep_checkpoints=True, **FIXTURE_OPTIONS
    )
    first = json.loads((run(options).report.parent / "results.json").read_text())
    assert any((tmp_path / "checkpoints").rglob("*.pt"))
    from tl_moe.collect import engine

    def no_forward(*args, **kwargs):
        raise AssertionError("a finished checkpoint must not stream the corpus again")

    monkeypatch.setattr(engine, "_stream", no_forward)
    again = run(options)
    assert json.loads((again.report.parent / "results.json").read_text())["sections"] == first["sections"]


@pytest.mark.skipif(not SHIPPED, reason="toy checkpoints not shipped")
def test_a_finished_run_removes_its_checkpoints_unless_asked_to_keep_them(tmp_path):
    run(RunOptions(out=tmp_path, analyses=("domains",), **FIXTURE_OPTIONS))
    assert not any((tmp_path / "checkpoints").rglob("*.pt"))
    assert (tmp_path / "results.json").exists()


@pytest.mark.skipif(not SHIPPED, reason="toy checkpoints not shipped")
def test_analyze_refuses_a_dense_model(tmp_path):
    with pytest.raises(InputError, match="dense"):
        run(RunOptions(model="toy/dense", out=tmp_path))


def test_analyze_rejects_unknown_analyses_and_tiny_budgets(tmp_path):
    with pytest.raises(InputError, match="probing"):
        run(RunOptions(analyses=("probing", "vibes"), out=tmp_path))
    with pytest.raises(InputError, match="max-tokens"):
        run(RunOptions(max_tokens=10, out=tmp_path))


@pytest.mark.skipif(not SHIPPED, reason="toy checkpoints not shipped")
def test_analyze_rejects_an_empty_corpus(tmp_path):
    corpus = tmp_path / "empty.jsonl"
    corpus.write_text('{"text": "", "domain": "a"}\n{"text": "", "domain": "b"}\n')
    with pytest.raises(ValueError, match="zero tokens|empty"):
        run(RunOptions(corpus=str(corpus), split="train", out=tmp_path / "r"))


def test_cli_reports_bad_input_without_a_traceback(capsys):
    from tl_moe.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "toy/moe-3x3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        "'toy/moe-3x3' is not a toy model" in err
        and "toy/moe-16x2" in err
        and len(err.strip().splitlines()) == 1
    )


def test_cli_flags_and_defaults_come_from_run_options():
    from tl_moe.cli import build_parser
    from tl_moe.pipeline.options import options_from_arguments

    parser = build_parser()
    assert options_from_arguments(parser.parse_args(["analyze"])) == RunOptions()
    parsed = options_from_arguments(
        parser.parse_args(["analyze", "toy/moe-8x2", "--max-tokens", "5000", "--probe-layers", "1,3"])
    )
    assert parsed == RunOptions(model="toy/moe-8x2", max_tokens=5000, probe_layers=(1, 3))
    assert (
        options_from_arguments(parser.parse_args(["analyze", "--dense-baseline", "none"])).dense_baseline
        is None
    )
    with pytest.raises(InputError, match="--probe-layers"):
        options_from_arguments(parser.parse_args(["analyze", "--probe-layers", "a,b"]))
    help_text = parser._subparsers._group_actions[0].choices["analyze"].format_help()
    for name in ("probing", "sparsity", "specialization", "domains", "logit_lens"):
        assert name in help_text


def test_cli_lets_real_bugs_keep_their_traceback(monkeypatch):
    from tl_moe import cli

    def broken(args):
        raise TypeError("a bug, not bad input")

    monkeypatch.setattr(cli, "_cmd_analyze", broken)
    with pytest.raises(TypeError, match="a bug"):
        cli.main(["analyze"])
