"""The README stays true: its hook table is the registry's, and CI runs its test command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from readme_results import BLOCKS
from tl_moe.models.hook_names import hook_table_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_readme_hook_table_is_generated_from_the_registry():
    assert hook_table_markdown() in (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme)
    test_command = next(command for command in commands if "pytest" in command)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_analysis_and_option_tables_are_generated_from_the_pipeline():
    import tl_moe.pipeline  # noqa: F401 (registers the built-in analyses)
    from tl_moe.pipeline.options import options_table_markdown
    from tl_moe.pipeline.registry import analyses_table_markdown

    readme = (ROOT / "README.md").read_text()
    assert options_table_markdown() in readme
    assert analyses_table_markdown() in readme


def test_readme_architecture_table_is_generated_from_the_sweep():
    from tl_moe.models.catalog import architecture_table_markdown

    assert architecture_table_markdown() in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name", [block.name for block in BLOCKS])
def test_readme_results_are_generated_from_the_committed_results_file(name):
    block = next(block for block in BLOCKS if block.name == name)
    document = (ROOT / block.document).read_text()
    start, end = block.markers
    assert start in document and end in document, f"{block.document} has no {name} results block"
    assert (
        document[document.index(start) + len(start) : document.index(end)].strip()
        == block.markdown(ROOT).strip()
    )


# A number with its interval, "0.42 [0.15, 0.64]": a result, which only a generated block may hold.
_RESULT_WITH_INTERVAL = re.compile(r"[-+−]?\d*\.\d+\s*\[\s*[-+−]?\d*\.?\d+\s*,\s*[-+−]?\d*\.?\d+\s*\]")
_GENERATED = re.compile(r"<!-- results(:\w+)?:start -->.*?<!-- results(:\w+)?:end -->", re.S)


def _hand_typed_results(text: str) -> list[str]:
    """Numbers with intervals outside the generated blocks (and outside code) of a Markdown text."""
    text = re.sub(r"```.*?```", "", _GENERATED.sub("", text), flags=re.S)
    return [m.group(0) for m in _RESULT_WITH_INTERVAL.finditer(text)]


# A plain measurement: a duration ("10.1 s", "23 min", "5 ms") or a measured ratio ("15.1×", "7.97×").
_MEASUREMENT = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?(?:s|ms|min)\b|(?<![\w.])\d+\.\d+\s?×")


def _outside_generated(text: str) -> str:
    """A Markdown text without its generated blocks, code blocks and inline code."""
    text = re.sub(r"```.*?```", "", _GENERATED.sub("", text), flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _hand_typed_measurements(text: str) -> list[str]:
    """Durations and measured ratios outside the generated blocks and code of a Markdown text."""
    return [m.group(0) for m in _MEASUREMENT.finditer(_outside_generated(text))]


# A rate or coverage measured by a planted study: "in 92 of 100", "covers 0.91", "rate of 0.21", "in 2.7%
# of runs", "in 0.885 of seeds", or a bare three-decimal rate "0.885" (one after "=" or "≈" is
# arithmetic the reader can redo, not a measurement).
_PLANTED_RATE = re.compile(
    r"\bin\s+(?:at\s+least\s+|about\s+)?\d+\s+of\s+\d+\b"
    r"|\b(?:cover(?:s|ed|ing)?|coverage|reject(?:s|ed|ing)?)(?:\s+(?:of|at|in|about|is|was))*\s+[-+−]?\d*\.\d+"
    r"|\brates?\s+(?:of|is|was)\s+[-+−]?\d*\.\d+"
    r"|\bin\s+\d+(?:\.\d+)?\s?%\s+of\b"
    r"|\bin\s+0\.\d+\s+of\b"
    r"|(?<![=≈]\s)(?<![\w.])0\.\d{3}(?!\d)"
)


def _hand_typed_rates(text: str) -> list[str]:
    """Planted-study rates and coverages outside the generated blocks and code of a Markdown text."""
    return [m.group(0) for m in _PLANTED_RATE.finditer(_outside_generated(text))]


def test_no_planted_rate_is_typed_by_hand_in_the_readme_or_the_docs():
    """Coverages and rejection rates of planted studies come from ``benchmarks/planted_studies.py``
    through a generated block, or the text names the test or study that measures them instead."""
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    typed = {str(d.relative_to(ROOT)): _hand_typed_rates(d.read_text()) for d in documents}
    assert not {name: found for name, found in typed.items() if found}


def test_the_hand_typed_rate_check_finds_one():
    planted = (
        "the interval covers 0.91 of the time; a Holm family-wise rate of 0.21; it covers 1/2 in 92 of 100\n"
        "seeds and in at least 13 of 15; some domain rejected in 2.7% of runs; covers 0 in 0.885 of seeds;\n"
        "5 draws 0.885, 20 draws 0.945.\n"
        "<!-- results:x:start -->\ncovers 0.95 in 190 of 200 seeds\n<!-- results:x:end -->\n`rate 0.123`"
    )
    assert _hand_typed_rates(planted) == [
        "covers 0.91",
        "rate of 0.21",
        "in 92 of 100",
        "in at least 13 of 15",
        "rejected in 2.7",
        "in 0.885 of",
        "0.885",
        "0.945",
    ]
    ordinary = (
        "16 experts, top-4 of 16, k = 1, at the nominal rate, two domains with rates 0.3 and 0.1, covers 0 in most seeds, a planted AUC of 0.5,\n"
        "2 of 2 rows, rejects at 5%, 95% interval, the F1 is `2p / (1 + p)` = 0.473, floor 1/(1 + B) ≈ 0.001"
    )
    assert _hand_typed_rates(ordinary) == []


def test_no_result_is_typed_by_hand_in_the_readme_or_the_docs():
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    typed = {str(d.relative_to(ROOT)): _hand_typed_results(d.read_text()) for d in documents}
    assert not {name: found for name, found in typed.items() if found}


def test_no_measurement_is_typed_by_hand_in_the_docs():
    """Timings and speed-ups depend on the machine and the code: they come from a results file through
    a generated block, or the text names the benchmark that measures them instead."""
    documents = sorted((ROOT / "docs").glob("*.md"))
    typed = {str(d.relative_to(ROOT)): _hand_typed_measurements(d.read_text()) for d in documents}
    assert not {name: found for name, found in typed.items() if found}


def _section(markdown: str, heading: str) -> str:
    """The text of a Markdown ``## heading`` section, up to the next ``## `` heading."""
    start = markdown.index(f"\n## {heading}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : None if end < 0 else end]


def test_no_measurement_is_typed_by_hand_in_the_readme_performance_section():
    """The README's Performance numbers come from results files (the main run's timings and each
    benchmark's ``--out`` file) through the generated performance block."""
    section = _section((ROOT / "README.md").read_text(), "Performance")
    assert "<!-- results:performance:start -->" in section
    assert _hand_typed_measurements(section) == []


def test_the_performance_block_quotes_the_runs_own_timings():
    """A planted results file: the main job's ratio is its total over the sum of its passes, and a
    benchmark table shows each row's values with its machine."""
    from readme_results import benchmark_markdown, main_job_cost_markdown
    from tl_moe.pipeline.options import RunOptions

    timings = {"pass a (s)": 10.0, "pass b (s)": 30.0, "finalize (s)": 50.0, "total (s)": 90.0}
    results = {
        "metadata": {"options": RunOptions().to_dict(), "timings": timings, "runtime": {"device": "cpu"}}
    }
    text = main_job_cost_markdown(results, "x.json")
    assert "total 90.0 s = **2.25×** the sum of its collection passes (40.0 s: a 10.0 s, b 30.0 s)" in text
    assert "Meets the target (total ≤ 2.5× its passes" in text
    timings["total (s)"] = 101.0
    assert "**2.52×**" in main_job_cost_markdown(results, "x.json")
    assert "Misses the target (total ≤ 2.5× its passes" in main_job_cost_markdown(results, "x.json")
    bench = {
        "title": "a planted benchmark",
        "command": "python benchmarks/bench_x.py",
        "machine": {"cpus": 2, "threads": 1, "load average (1 min) at the start": 0.5},
        "table": {
            "columns": {"run": "", "s": ".3f", "ratio": ".2f×"},
            "rows": [{"run": "one", "s": 1.23456, "ratio": 0.5}],
        },
        "notes": ["A note."],
    }
    text = benchmark_markdown(bench, "y.json")
    assert "| one | 1.235 | 0.50× |" in text and "2 CPUs (shared), 1 thread(s)" in text and "A note." in text


def test_the_hand_typed_measurement_check_finds_one():
    planted = (
        "one forward took 10.1 s, the exact effects 15.1× that; a run of 23 min.\n"
        "<!-- results:x:start -->\nit took 4.2 s (3.5×)\n<!-- results:x:end -->\n`--timeout 60 s`"
    )
    assert _hand_typed_measurements(planted) == ["10.1 s", "15.1×", "23 min"]
    assert (
        _hand_typed_measurements("16 experts, top-4, d_expert 256, × 300, layers 0 to 3, docs/sections") == []
    )


def test_the_hand_typed_result_check_finds_one():
    planted = "Spearman rho 0.42 [0.15, 0.64] over 64 experts.\n<!-- results:x:start -->\n0.1 [0.0, 0.2]\n<!-- results:x:end -->"
    assert _hand_typed_results(planted) == ["0.42 [0.15, 0.64]"]
    assert _hand_typed_results("default 0.5, [1, 2] tokens") == []


def test_the_command_line_of_a_run_reproduces_its_options():
    from readme_results import command_line
    from tl_moe.pipeline.options import RunOptions

    options = RunOptions(
        model="toy/moe-8x2", analyses=("drivers",), max_tokens=6000, skip_untrained_null=True, out=Path("x")
    )
    assert command_line(options.to_dict()) == (
        "tl-moe analyze toy/moe-8x2 --max-tokens 6000 --analyses drivers --skip-untrained-null"
    )
    assert command_line(RunOptions().to_dict()) == "tl-moe analyze"


def _held_out(comparison, estimate, n, k=1, metric="balanced_accuracy"):
    return {
        "protocol": "held_out",
        "comparison": comparison,
        "k": k,
        "metric": metric,
        "estimate": estimate,
        "ci_low": estimate - 0.01,
        "ci_high": estimate + 0.01,
        "interval_available": True,
        "n_concepts": n,
    }


def test_each_held_out_cell_and_each_quoted_number_names_its_concepts_and_no_ratio_mixes_sets():
    """Planted: MoE − dense over 18 concepts, the matched-count control over 15 at k = 1 (14 at k = 64),
    its null-corrected remainder over 11. Each table cell carries its own count, the reading names the
    count behind each number, and no "% remains" ratio is formed across the two different sets."""
    from readme_results import _held_out_table, _reading

    records = [
        _held_out("moe_vs_dense", 0.146, 18),
        _held_out("moe_vs_dense", 0.035, 18, k=64),
        _held_out("moe_vs_dense_on_routed_tokens_matched_count", 0.028, 15),
        _held_out("moe_vs_dense_on_routed_tokens_matched_count", -0.003, 14, k=64),
        _held_out("matched_count_minus_its_null", 0.045, 11),
    ]
    table = "\n".join(_held_out_table(records, [1, 64]))
    assert "+0.028 [+0.018, +0.038] (15) | -0.003 [-0.013, +0.007] (14)" in table
    assert "| concepts |" not in table
    reading = _reading(records)
    assert "+0.146 [+0.136, +0.156] over 18 concepts" in reading
    assert "+0.028 [+0.018, +0.038] over 15 concepts" in reading
    assert "over the 11 concepts gated in all four arms" in reading and "+0.045 [+0.035, +0.055]" in reading
    assert "different concept sets (18 and 15 concepts)" in reading
    assert "%" not in reading


@pytest.mark.parametrize(
    ("content", "piece"),
    [
        (None, "cannot read"),
        ("not json {", "is not JSON"),
        ('{"models": []}', "is not a tl-moe run's results.json (no 'metadata')"),
        ("[1, 2]", "is not a tl-moe run's results.json (no 'metadata')"),
    ],
)
def test_the_results_tool_refuses_a_file_it_cannot_use_in_one_line(content, piece, tmp_path, capsys):
    from readme_results import main

    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main([str(path)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert piece in line and repr(str(path)) in line and "accepted: a tl-moe results.json" in line


def test_the_results_tool_refuses_a_missing_readme_to_write_in_one_line(tmp_path, capsys):
    from readme_results import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--write", str(tmp_path / "README.md")])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "cannot read" in line and "README.md" in line


def _planted_rho(misses: dict[str, dict[str, int]] | None) -> dict:
    """A planted-studies file with the rho study's REAP split-halves cells at the default gate."""
    from readme_results import SALIENCY_STATISTIC

    def cell(hits: int) -> dict:
        return {"rate": hits / 200, "hits": hits, "n": 200, "se": 0.03, "nominal": 0.95, "nominal_se": 0.015}

    keys = {case: f"{case}, gate 5, percentile, {SALIENCY_STATISTIC}" for case in ("planted null", "rare")}
    study = {
        "rates": {keys["planted null"]: cell(193), keys["rare"]: cell(132)},
        "settings": {
            "chosen method": "percentile",
            "default gate": 5,
            "cells": [{"gate": 5, "cases": list(keys)}],
        },
    }
    if misses is not None:
        study["misses, truth above / below the interval"] = {keys[case]: m for case, m in misses.items()}
    return {"studies": {"rho_interval_methods": study}}


def test_the_drivers_block_gives_the_saliency_rhos_planted_coverage_and_the_direction_of_its_misses():
    from readme_results import SALIENCY_FINDING, drivers_markdown

    results = json.loads((ROOT / "docs/results/toy_drivers.json").read_text())
    results["sections"]["drivers"]["metrics"]["Spearman(REAP saliency, removal effect) | basic 95% CI"] = [
        0.67,
        0.82,
    ]
    misses = {"planted null": {"above": 3, "below": 4}, "rare": {"above": 60, "below": 8}}
    line = next(
        line
        for line in drivers_markdown(results, "x", _planted_rho(misses)).splitlines()
        if SALIENCY_FINDING in line
    )
    assert "193 of 200 seeds" in line and "132 of 200 seeds" in line
    assert (
        "(60 of its 68 misses with the truth above the interval, 8 below, so the interval understates ρ"
        in line
    )
    # the null covers at its nominal rate: its misses are counted, no direction is claimed
    assert "3 of its 7 misses" in line and "states" not in line.split("rare:")[0]
    assert "basic interval of REAP's ρ (same resamples): [+0.67, +0.82]" in line
    # an interval that understates the expected-score ρ is not called a 95% interval for it
    assert "not a 95% interval for it" in line
    flipped = {"planted null": {"above": 3, "below": 3}, "rare": {"above": 8, "below": 60}}
    line = drivers_markdown(results, "x", _planted_rho(flipped))
    assert "so the interval overstates ρ there" in line and "understates" not in line
    assert "not a 95% interval for it" not in line
    # a study file without the miss counts (and a run without the basic interval): no direction is claimed
    del results["sections"]["drivers"]["metrics"]["Spearman(REAP saliency, removal effect) | basic 95% CI"]
    line = drivers_markdown(results, "x", _planted_rho(None))
    assert "132 of 200 seeds" in line and "misses" not in line and "basic interval of the same" not in line
    assert "planted study of REAP's ρ interval" not in drivers_markdown(results, "x", {})


def test_the_domain_confound_wording_gives_availability_and_the_linked_cases_power():
    from readme_results import _availability, _linked_summary

    record = {
        "rates": {
            "k": {"hits": 121, "n": 132, "rate": 121 / 132, "se": 0.02, "nominal": 0.95, "nominal_se": 0.02}
        },
        "misses, truth above / below the interval": {"k": {"above": 11, "below": 0, "no interval": 68}},
    }
    assert "an interval in 132 of 200 seeds" in _availability(record, "k", 200)
    assert "covers in 121 of 200 (0.605)" in _availability(record, "k", 200)
    record["misses, truth above / below the interval"]["k"]["no interval"] = 0
    assert _availability(record, "k", 200) == ""
    kind = "linked"
    study = {"settings": {"kinds": {kind: {"weight sd": 0.8, "link": 0.15, "tokens": [20, 60]}}}}
    rate = {"hits": 154, "n": 200, "rate": 0.77, "se": 0.03, "nominal": 0.95, "nominal_se": 0.0154}
    partial = {
        "rates": {f"{kind}, over all layers": rate},
        "mean truth": {f"{kind}, over all layers": 0.472},
        "misses, truth above / below the interval": {f"{kind}, over all layers": {"above": 46, "below": 0}},
    }
    power = {f"{kind}, mean within-layer": {"hits": 187, "n": 200, "rate": 0.935, "se": 0.017}}
    text = _linked_summary(study, partial, power)
    assert "at 20–59 tokens per document (true value +0.47 on average over the seeds)" in text
    assert "excludes 0 in 187 of 200 seeds" in text and "covers its truth in 154 of 200 seeds" in text
    assert "below the nominal 0.95" in text and "understates ρ there" in text
    assert _linked_summary(study, partial, {}) == ""


def test_the_drivers_block_gives_the_paired_rhos_planted_coverage_and_no_direction_for_a_coin_flip():
    from readme_results import ESTIMATE_FINDING, PAIRED_STATISTICS, SALIENCY_STATISTIC, drivers_markdown

    results = json.loads((ROOT / "docs/results/toy_drivers.json").read_text())
    statistics = (SALIENCY_STATISTIC, *PAIRED_STATISTICS)
    cases = ("planted null", "rare")
    key = {(c, s): f"{c}, gate 5, percentile, {s}" for c in cases for s in statistics}
    hits = {"planted null": 190, "rare": 170}  # rare: 0.85, below nominal by more than 2 se
    # estimate: 12 vs 18 misses (a fair coin could do that); REAP: 27 vs 3; difference: 2 vs 28
    split = {"estimate, paired": (12, 18), "REAP, paired": (27, 3), "estimate − REAP, paired": (2, 28)}
    study = {
        "rates": {
            key[c, s]: {
                "rate": hits[c] / 200,
                "hits": hits[c],
                "n": 200,
                "se": 0.02,
                "nominal": 0.95,
                "nominal_se": 0.0154,
            }
            for c in cases
            for s in statistics
        },
        "misses, truth above / below the interval": {
            key["rare", s]: {"above": a, "below": b} for s, (a, b) in split.items()
        },
        "settings": {
            "chosen method": "percentile",
            "default gate": 5,
            "cells": [{"gate": 5, "cases": list(cases)}],
        },
    }
    line = next(
        line
        for line in drivers_markdown(results, "x", {"studies": {"rho_interval_methods": study}}).splitlines()
        if ESTIMATE_FINDING in line
    )
    tail = line.split("planted study of these pooled paired intervals")[1]
    estimate, reap, difference = tail.split(" — ")[1:]
    assert "170 of 200 seeds" in estimate and "12 of its 30 misses" in estimate and "states" not in estimate
    assert "27 of its 30 misses" in reap and "so the interval understates ρ there" in reap
    assert (
        "2 of its 30 misses" in difference
        and "so the interval lies above the true difference there (it leans toward the estimate)"
        in difference
    )
    del study["rates"][key["rare", "REAP, paired"]]
    assert "paired intervals" not in drivers_markdown(
        results, "x", {"studies": {"rho_interval_methods": study}}
    )


def test_the_confound_summary_names_the_residual_partial_rho_only_when_it_is_not_zero():
    from readme_results import _residual_confound

    key = "confounded, over all layers"
    assert "averaged -0.05" in _residual_confound({"mean estimate": {key: -0.0458}}, key)
    assert "below 0" in _residual_confound({"mean estimate": {key: -0.0458}}, key)
    assert "above 0" in _residual_confound({"mean estimate": {key: 0.03}}, key)
    assert _residual_confound({"mean estimate": {key: 0.004}}, key) == ""
    assert _residual_confound({}, key) == ""
