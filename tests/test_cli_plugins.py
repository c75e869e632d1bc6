"""A plugin analysis reached from the real command line: ``--plugin MODULE`` (or ``TL_MOE_PLUGINS``)
imports it before the flags are built; whole flag names only; an unknown ``--NAME.key`` refused in one
line naming the accepted keys; and the run's results read as a mapping."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from tl_moe.errors import InputError
from tl_moe.pipeline import unregister
from tl_moe.zoo.registry import checkpoint_dir

SHIPPED = (checkpoint_dir("toy/moe-4x2") / "metadata.json").exists()

# A user's plugin module: per expert of the last sparse layer, the tokens whose mixing weight for it is
# above a threshold share (the docs/ARCHITECTURE.md recipe, with its own option).
PLUGIN = textwrap.dedent(
    """
    import math
    from dataclasses import dataclass

    import pandas as pd
    import torch

    import tl_moe
    from tl_moe.collect import BinEvents, CountAccumulator
    from tl_moe.errors import InputError
    from tl_moe.pipeline import AccumulatorSpec, Analysis, Need, Result, register
    from tl_moe.settings import option


    @dataclass(frozen=True)
    class AboveShareConfig:
        threshold: float = option(0.5, "share a token must give an expert to be counted", parse=float)

        def check(self):
            t = self.threshold
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 <= t < 1:
                raise InputError(f"--above-share.threshold takes a number in [0, 1), got {t!r}.")


    @dataclass(frozen=True)
    class AboveShare(AccumulatorSpec):
        layer: int
        threshold: float

        def build(self, model, run):
            idx = tl_moe.get_act_name("topk_indices", self.layer)
            w = tl_moe.get_act_name("topk_weights", self.layer)

            def events(acts, meta):
                experts = meta.tokens(acts[idx]).long()
                return BinEvents(experts[meta.tokens(acts[w]) > self.threshold])

            return CountAccumulator([idx, w], events, shape=(model.moe_cfg.num_experts,))


    @dataclass(frozen=True)
    class AboveShareResult(Result):
        counts: torch.Tensor
        threshold: float

        def to_frame(self):
            return pd.DataFrame({"expert": range(len(self.counts)), "tokens": self.counts.tolist()})

        def metrics(self):
            return {"threshold": self.threshold, "tokens counted": int(self.counts.sum())}


    @register
    class AboveShareAnalysis(Analysis):
        name, title = "above_share", "Tokens above a share"
        summary = "per expert of the last sparse layer, tokens whose mixing weight exceeds a threshold"
        default = False
        config_class = AboveShareConfig

        def needs(self, run):
            layer = run.config(run.main).sparse_layers[-1]
            return [Need(run.main, AboveShare(layer, float(run.options.config(self.name).threshold)))]

        def finalize(self, run, inputs):
            return AboveShareResult(inputs[self.needs(run)[0]], float(run.options.config(self.name).threshold))
    """
)

RUN = [
    "--max-tokens",
    "1000",
    "--seq-len",
    "32",
    "--batch-size",
    "4",
    "--dense-baseline",
    "none",
    "--threads",
    "1",
]


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The plugin written as ``tmp_path/user_above_share.py`` (not yet imported); the working folder
    is ``tmp_path``; its registration, module and path entries are undone afterwards."""
    (tmp_path / "user_above_share.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("TL_MOE_PLUGINS", raising=False)
    yield tmp_path / "user_above_share.py"
    unregister("above_share")
    sys.modules.pop("user_above_share", None)


def _run(main, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    return exit_info.value.code


@pytest.mark.skipif(not SHIPPED, reason="toy checkpoints not shipped")
def test_a_plugin_module_named_by_plugin_runs_with_its_option(plugin, tmp_path, capsys):
    from tl_moe.cli import main
    from tl_moe.pipeline import catalog

    assert "above_share" not in catalog.TABLE  # planted: not there before --plugin imports it
    main(["--plugin", "user_above_share", "analyze", "toy/moe-4x2", "--analyses", "above_share",
          "--above-share.threshold", "0", *RUN, "--out", str(tmp_path / "zero")])  # fmt: skip
    assert "What this run found: no findings" in capsys.readouterr().out  # no empty header
    # the same module as a .py path, the option at 0.6
    main(["--plugin", str(plugin), "analyze", "toy/moe-4x2", "--analyses", "above_share",
          "--above-share.threshold", "0.6", *RUN, "--out", str(tmp_path / "high")])  # fmt: skip
    zero = json.loads((tmp_path / "zero" / "results.json").read_text())
    high = json.loads((tmp_path / "high" / "results.json").read_text())
    assert zero["metadata"]["options"]["above_share.threshold"] == 0
    assert high["metadata"]["options"]["above_share.threshold"] == 0.6
    # threshold 0: every one of the top-2 weights of every streamed token is positive, so each token
    # counts twice (the run streams exactly --max-tokens real tokens, BOS included)
    assert zero["sections"]["above_share"]["metrics"]["tokens counted"] == 2 * 1000
    # two shares of one token cannot both exceed 0.6 (they sum to at most 1): at most one count a token
    assert 0 < high["sections"]["above_share"]["metrics"]["tokens counted"] <= 1000


def test_plugins_from_the_environment_and_a_module_that_fails_to_import(plugin, monkeypatch, capsys):
    from tl_moe.cli import main
    from tl_moe.pipeline import catalog

    monkeypatch.setenv("TL_MOE_PLUGINS", "user_above_share")
    # imported from TL_MOE_PLUGINS: its flag exists and its check runs (rc 2, one line)
    assert _run(main, "analyze", "--analyses", "above_share", "--above-share.threshold", "1.5") == 2
    assert "above_share" in catalog.TABLE
    assert (
        capsys.readouterr().err
        == "tl-moe: error: --above-share.threshold takes a number in [0, 1), got 1.5.\n"
    )
    monkeypatch.delenv("TL_MOE_PLUGINS")
    assert _run(main, "--plugin", "no_such_plugin_module", "analyze") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'no_such_plugin_module'" in err and "ModuleNotFoundError" in err
    (plugin.parent / "broken_plugin.py").write_text("raise RuntimeError('oops\\nsecond line')\n")
    assert _run(main, "--plugin", "broken_plugin.py", "analyze") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'broken_plugin.py'" in err and "RuntimeError: oops second line" in err
    assert "broken_plugin" not in sys.modules


def test_an_unknown_analysis_hints_at_plugin(monkeypatch):
    from tl_moe.pipeline import runner

    monkeypatch.setattr(runner, "collect", lambda *a, **k: pytest.fail("a pass started"))
    with pytest.raises(InputError, match="Unknown analysis 'above_share'.*tl-moe --plugin MODULE"):
        runner.analyze("toy/moe-4x2", analyses=["above_share"])


def test_flags_are_never_abbreviated_and_unknown_keys_name_the_accepted_ones(plugin, capsys):
    from tl_moe.cli import main

    # a prefix of a real flag is refused, not taken as the flag
    assert _run(main, "--plugin", "user_above_share", "analyze", "--above-share.t", "0.7") == 2
    assert capsys.readouterr().err == (
        "tl-moe: error: --above-share.t is not a setting of the above_share analysis; "
        "accepted: --above-share.threshold.\n"
    )
    assert _run(main, "analyze", "--probing.k", "1") == 2
    assert "accepted: --probing.ks, --probing.min-examples" in capsys.readouterr().err
    assert _run(main, "analyze", "--max-tok", "5") == 2  # a run-wide flag's prefix, too
    assert "unrecognized arguments: --max-tok" in capsys.readouterr().err
    assert _run(main, "analyze", "--nosuch.key", "5") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no analysis 'nosuch'" in err and "--plugin MODULE" in err


def test_every_flag_in_the_docs_is_a_whole_flag():
    """No documented command relies on an abbreviation, which the parsers no longer take."""
    import re
    from pathlib import Path

    from tl_moe.cli import build_parser

    root = Path(__file__).resolve().parents[1]
    parser = build_parser()
    flags = set(parser._option_string_actions)
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            flags |= set(sub._option_string_actions)
            for inner in sub._subparsers._group_actions if sub._subparsers else ():
                for deeper in inner.choices.values():
                    flags |= set(deeper._option_string_actions)
    texts = [root / "README.md", *(root / "docs").glob("*.md"), *(root / "demos").rglob("*.*")]
    texts += list((root / "benchmarks").rglob("*.*"))
    used = set()
    for path in texts:
        if path.suffix in {".md", ".py", ".sh", ".ipynb", ".txt"}:
            for command in re.findall(
                r"tl-moe (?:analyze|plan|explain|zoo|hooks|corpus)[^`\"'\n|]*", path.read_text()
            ):
                used |= set(re.findall(r"(?<![\w-])--[A-Za-z][\w.-]*", command))
    used.discard("--first-choice.layer")  # the docs' example plugin's flag (exists once it is imported)
    assert used and used <= flags, sorted(used - flags)


@pytest.mark.skipif(not SHIPPED, reason="toy checkpoints not shipped")
def test_run_results_read_as_a_read_only_mapping_of_the_analyses_that_ran():
    from collections.abc import Mapping

    from tl_moe.pipeline import analyze

    results = analyze(
        "toy/moe-4x2", analyses=["domains"], max_tokens=1000, seq_len=32, batch_size=4, progress=False
    )
    assert isinstance(results, Mapping) and list(results) == list(results.keys()) == list(results.results)
    assert len(results) == len(results.results) >= 1 and "domains" in results
    assert "probing" not in results and 3 not in results  # planted absent: not run / not a name
    assert dict(results.items()) == results.results and results.get("probing") is None
    assert results["domains"] is results.results["domains"]
    with pytest.raises(KeyError, match="No result of analysis 'probing'"):
        results["probing"]
    with pytest.raises(TypeError):
        results["probing"] = results["domains"]  # read-only
