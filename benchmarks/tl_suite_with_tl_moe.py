"""TransformerLens's own tests, with and without tl_moe attached: the pass/fail sets must agree.

TransformerLens's source distribution ships ``tests/``. This script runs the test files for the
bridge's MoE architectures twice — as shipped, and with every booted bridge passed through
``tl_moe.attach`` (``benchmarks/tl_moe_autoattach_plugin.py``) — and reports any test whose
outcome differs. Exit status 1 if any does.

Usage::

    pip download transformer-lens==$(python -c "import transformer_lens, importlib.metadata as m; print(m.version('transformer-lens'))") \\
        --no-deps --no-binary :all: -d /tmp/tl   # or fetch the sdist any other way
    tar xzf /tmp/tl/transformer_lens-*.tar.gz -C /tmp/tl
    PYTHONPATH=src python benchmarks/tl_suite_with_tl_moe.py /tmp/tl/transformer_lens-<version> [-k EXPR] [files...]

Without ``files``, every ``tests/integration/model_bridge`` and ``tests/unit`` file whose name
mentions an MoE architecture is run. Nothing from TransformerLens is copied into this project.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

MOE_WORDS = (
    "moe", "mixtral", "deepseek", "granite_moe", "gpt_oss", "jamba", "qwen3_next", "nemotron_h", "afmoe",
    "laguna", "minimax", "flex_olmo", "glm4_moe", "glm_moe", "ernie4_5_moe", "lfm2_moe",
)  # fmt: skip


def moe_test_files(root: Path) -> list[str]:
    files = sorted((root / "tests").rglob("test_*.py"))
    return [str(f.relative_to(root)) for f in files if any(word in f.name for word in MOE_WORDS)]


def outcomes(root: Path, files: list[str], extra: list[str], plugin: bool) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        env = dict(os.environ)
        here = Path(__file__).resolve().parent
        env["PYTHONPATH"] = os.pathsep.join(
            [str(root), str(here), str(here.parent / "src"), env.get("PYTHONPATH", "")]
        )
        command = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider"]
        command += [f"--junitxml={report}"]
        command += (["-p", "tl_moe_autoattach_plugin"] if plugin else []) + extra + files
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        summary = [
            line for line in done.stdout.splitlines() if "passed" in line or "tl_moe auto-attach" in line
        ]
        print(("with tl_moe:    " if plugin else "as shipped:     ") + " | ".join(summary[-2:]))
        result = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            kinds = {child.tag for child in case}
            result[name] = (
                "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
            )
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="an extracted TransformerLens source distribution")
    parser.add_argument("files", nargs="*", help="test files, relative to root (default: the MoE ones)")
    parser.add_argument("-k", default=None, help="pytest -k expression")
    args = parser.parse_args()
    files = args.files or moe_test_files(args.root)
    extra = ["-k", args.k] if args.k else []
    print(f"{len(files)} TransformerLens test files")
    plain = outcomes(args.root, files, extra, plugin=False)
    attached = outcomes(args.root, files, extra, plugin=True)
    differ = sorted(name for name in plain.keys() | attached.keys() if plain.get(name) != attached.get(name))
    counts = {kind: sum(v == kind for v in plain.values()) for kind in ("passed", "failed", "skipped")}
    print(f"{len(plain)} tests as shipped: {counts}")
    for name in differ:
        print(f"DIFFERS {name}: as shipped {plain.get(name)}, with tl_moe {attached.get(name)}")
    print("same pass/fail set" if not differ else f"{len(differ)} test(s) differ")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
