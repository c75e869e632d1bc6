"""Every bad input we know of, through the real CLI: exit code 2 and ONE line naming the input,
before any pass. The table in docs/BAD_INPUTS.md is generated from these runs
(`TL_MOE_WRITE_DOCS=1 python -m pytest tests/test_bad_inputs.py` rewrites it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tl_moe.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BAD_INPUTS.md"


def _cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(what was tried, CLI arguments, a piece the one-line message must contain)."""
    (tmp / "a_file").write_text("not a directory")
    (tmp / "empty.jsonl").write_text('{"text": "", "domain": "a"}\n{"text": "", "domain": "b"}\n')
    (tmp / "one_domain.jsonl").write_text(
        "".join(f'{{"text": "word {i} again", "domain": "only"}}\n' for i in range(40))
    )
    garbage = tmp / "garbage_out" / "checkpoints" / "toy_moe-16x2"
    garbage.mkdir(parents=True)
    (garbage / "collect-shard0-of-1.pt").write_bytes(b"\x00garbage bytes, not a checkpoint")
    return [
        ("a model path that does not exist", ["analyze", str(tmp / "no_such_model")], "no_such_model"),
        ("an unknown toy model", ["analyze", "toy/moe-3x3"], "toy/moe-3x3"),
        ("a dense model as the analyzed MoE", ["analyze", "toy/dense"], "dense"),
        ("an MoE as the dense baseline", ["analyze", "--dense-baseline", "toy/moe-8x2"], "--dense-baseline"),
        (
            "a dense baseline that does not exist",
            ["analyze", "--dense-baseline", str(tmp / "missing")],
            "--dense-baseline",
        ),
        ("--out is a file", ["analyze", "--out", str(tmp / "a_file")], "--out"),
        ("--device banana", ["analyze", "--device", "banana"], "--device"),
        ("--device cuda on a machine without CUDA", ["analyze", "--device", "cuda"], "--device"),
        ("--seq-len longer than the model's positions", ["analyze", "--seq-len", "1024"], "--seq-len"),
        ("--seq-len far too large for memory", ["analyze", "--seq-len", "100000"], "--seq-len"),
        ("--max-tokens below the statistics floor", ["analyze", "--max-tokens", "10"], "--max-tokens"),
        ("--max-tokens that is not a number", ["analyze", "--max-tokens", "abc"], "--max-tokens"),
        ("--probe-layers that are not integers", ["analyze", "--probe-layers", "a,b"], "--probe-layers"),
        ("--probe-layers that are not sparse layers", ["analyze", "--probe-layers", "7"], "--probe-layers"),
        ("an unknown analysis", ["analyze", "--analyses", "probing,vibes"], "vibes"),
        ("--dtype float8", ["analyze", "--dtype", "float8"], "--dtype"),
        ("--threads 0", ["analyze", "--threads", "0"], "thread"),
        ("an unknown embedded corpus version", ["analyze", "--corpus", "embedded:v9"], "embedded"),
        (
            "--probe-rows-per-class below --min-examples",
            ["analyze", "--probe-rows-per-class", "5"],
            "--probe-rows",
        ),
        (
            "--reweight-factors that are not numbers",
            ["analyze", "--reweight-factors", "a,b"],
            "--reweight-factors",
        ),
        (
            "a corpus whose documents are all empty",
            ["analyze", "--corpus", str(tmp / "empty.jsonl"), "--split", "train"],
            "split",
        ),
        (
            "a corpus without the requested split",
            ["analyze", "--corpus", str(tmp / "empty.jsonl")],
            "validation",
        ),
        (
            "a single-domain corpus with the domains analysis",
            [
                "analyze",
                "--corpus",
                str(tmp / "one_domain.jsonl"),
                "--split",
                "train",
                "--analyses",
                "domains",
            ],
            "domain",
        ),
        (
            "a garbage checkpoint in --out",
            ["analyze", "--analyses", "domains", "--out", str(tmp / "garbage_out")],
            "--fresh",
        ),
    ]


def _message(arguments: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    err = capsys.readouterr().err
    # transformers' weight-loading progress bar is progress, not a message: drop its lines
    lines = [
        line
        for line in err.replace("\r", "\n").splitlines()
        if line.strip() and "Loading weights" not in line
    ]
    return exit_info.value.code, "\n".join(lines)


def test_every_bad_input_gets_one_line_and_the_table_is_current(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TL_MOE_THREADS", "1")
    rows = ["| input | `tl-moe` prints (exit code 2) |", "|---|---|"]
    failures = []
    for what, arguments, expected in _cases(tmp_path):
        code, message = _message(arguments, capsys)
        lines = message.splitlines()
        if (
            code != 2
            or len(lines) != 1
            or expected not in message
            or not message.startswith("tl-moe: error: ")
        ):
            failures.append(f"{what}: exit {code}: {message[-400:]!r}")
            continue
        shown = lines[0].removeprefix("tl-moe: error: ").replace(str(tmp_path), "TMP").replace("|", "\\|")
        rows.append(f"| {what} | {shown} |")
    assert not failures, "\n".join(failures)
    table = "\n".join(rows)
    text = (
        "# Bad inputs and what `tl-moe analyze` says\n\n"
        "<!-- Generated by tests/test_bad_inputs.py (TL_MOE_WRITE_DOCS=1 rewrites it); edit the test, not this file. -->\n\n"
        "Each input below was run through the command line by the test suite. Every one exits with code 2\n"
        "and one line naming the input and what is accepted, before any pass over the corpus starts\n"
        "(`TMP` stands for the test's temporary folder).\n\n" + table + "\n"
    )
    if os.environ.get("TL_MOE_WRITE_DOCS"):
        DOC.write_text(text)
    assert DOC.read_text() == text, "docs/BAD_INPUTS.md is stale: rerun with TL_MOE_WRITE_DOCS=1"
