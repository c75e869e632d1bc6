"""`tl-moe hooks --architectures` lists as supported exactly what the README's generated table does."""

from __future__ import annotations

import re
from pathlib import Path

from tl_moe.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _readme_tables() -> tuple[set[str], set[str]]:
    readme = (ROOT / "README.md").read_text()
    supported_part, refused_part = readme.split("| refused model type | why |", 1)
    table = supported_part.split("| model type | HF class | routing (verified) | shared experts |", 1)[1]
    supported = set(re.findall(r"^\| `(\w+)` \| `\w+` \|", table, re.M))
    refused = set(re.findall(r"^\| `(\w+)` \| (?!`)", refused_part.split("\n\n", 1)[0], re.M))
    return supported, refused


def test_architectures_listing_agrees_with_the_readme_tables(capsys):
    main(["hooks", "--architectures"])
    out = capsys.readouterr().out
    listed, _, refused_part = out.partition("Refused")
    supported = {line.split()[0] for line in listed.splitlines()[1:] if line.strip()}
    refused = {line.split()[0] for line in refused_part.splitlines()[1:] if line.strip()}
    readme_supported, readme_refused = _readme_tables()
    assert readme_supported and readme_refused
    assert supported == readme_supported
    assert refused == readme_refused
    assert not supported & refused
