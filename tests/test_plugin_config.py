"""A plugin analysis with a config of its own: set from the command line and from analyze(), refused in
one line when a key is unknown; and the built-in analyses' settings under both spellings."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd
import pytest
import torch

from tl_moe.errors import InputError
from tl_moe.pipeline import Analysis, Need, Result, RunContext, RunOptions, analyze, register, unregister
from tl_moe.pipeline.needs import TokensByDomain
from tl_moe.settings import option
from tl_moe.zoo.registry import checkpoint_dir

SHIPPED = (checkpoint_dir("toy/moe-4x2") / "metadata.json").exists()


@dataclass(frozen=True)
class BusyDomainsConfig:
    threshold: int = option(1, "least tokens a domain needs to count as busy", parse=int)

    def check(self) -> None:
        if self.threshold < 0:
            raise InputError(f"--busy-domains.threshold must be 0 or more, got {self.threshold!r}.")


@dataclass(frozen=True)
class BusyDomainsResult(Result):
    tokens: torch.Tensor
    threshold: int

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"domain": range(len(self.tokens)), "tokens": self.tokens.tolist()})

    def metrics(self):
        return {"threshold": self.threshold, "busy domains": int((self.tokens >= self.threshold).sum())}


class BusyDomains(Analysis):
    name = "busy_domains"
    title = "Busy domains"
    summary = "domains with at least --busy-domains.threshold tokens"
    default = False
    config_class = BusyDomainsConfig

    def needs(self, run: RunContext):
        return [Need(run.main, TokensByDomain())]

    def finalize(self, run: RunContext, inputs) -> BusyDomainsResult:
        tokens = inputs[Need(run.main, TokensByDomain())]
        return BusyDomainsResult(tokens, run.options.config(self.name).threshold)


@pytest.fixture
def busy_domains():
    register(BusyDomains)
    yield BusyDomains
    unregister(BusyDomains.name)


RUN = ["--max-tokens", "1000", "--seq-len", "32", "--batch-size", "4", "--dense-baseline", "none"]


@pytest.mark.skipif(not SHIPPED, reason="toy checkpoints not shipped")
def test_a_plugins_option_is_set_from_the_command_line(busy_domains, tmp_path):
    from tl_moe.cli import main

    main(["analyze", "toy/moe-4x2", "--analyses", "busy_domains", "--busy-domains.threshold", "3", *RUN,
          "--out", str(tmp_path / "small"), "--threads", "1"])  # fmt: skip
    main(["analyze", "toy/moe-4x2", "--analyses", "busy_domains", "--busy-domains.threshold", "1000000", *RUN,
          "--out", str(tmp_path / "huge"), "--threads", "1"])  # fmt: skip
    small = json.loads((tmp_path / "small" / "results.json").read_text())
    huge = json.loads((tmp_path / "huge" / "results.json").read_text())
    assert small["sections"]["busy_domains"]["metrics"]["threshold"] == 3
    assert small["metadata"]["options"]["busy_domains.threshold"] == 3
    busy = small["sections"]["busy_domains"]["metrics"]["busy domains"]
    assert busy == sum(n >= 3 for n in small["metadata"]["tokens_by_domain"].values()) >= 1
    # planted "no effect": no domain reaches a million tokens of a 1000-token run
    assert huge["sections"]["busy_domains"]["metrics"]["busy domains"] == 0


def test_a_bad_plugin_option_on_the_command_line_is_refused_in_one_line(busy_domains, capsys):
    from tl_moe.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "--analyses", "busy_domains", "--busy-domains.threshold", "many"])
    assert exit_info.value.code == 2
    assert "--busy-domains.threshold takes an integer, got 'many'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "--analyses", "busy_domains", "--busy-domains.threshold", "-1"])
    assert exit_info.value.code == 2
    assert "--busy-domains.threshold must be 0 or more, got -1." in capsys.readouterr().err


@pytest.mark.skipif(not SHIPPED, reason="toy checkpoints not shipped")
def test_a_plugins_option_is_set_from_analyze(busy_domains):
    common = dict(analyses=["busy_domains"], max_tokens=1000, seq_len=32, batch_size=4, progress=False)
    small = analyze("toy/moe-4x2", busy_domains=dict(threshold=3), **common)["busy_domains"]
    huge = analyze("toy/moe-4x2", busy_domains=dict(threshold=10**6), **common)["busy_domains"]
    assert small.threshold == 3 and huge.threshold == 10**6
    assert small.metrics()["busy domains"] == int((small.tokens >= 3).sum()) >= 1
    assert huge.metrics()["busy domains"] == 0  # planted "no effect"


def test_unknown_plugin_keys_are_refused_before_any_pass(busy_domains, monkeypatch):
    from tl_moe.pipeline import runner

    monkeypatch.setattr(runner, "collect", lambda *a, **k: pytest.fail("a pass started"))
    with pytest.raises(InputError) as error:
        analyze("toy/moe-4x2", analyses=["busy_domains"], busy_domains=dict(treshold=3))
    message = str(error.value)
    assert "\n" not in message and "'treshold'" in message and "accepted: threshold" in message
    with pytest.raises(InputError, match="analyze\\(\\) has no setting 'busy_domain'"):
        analyze("toy/moe-4x2", analyses=["busy_domains"], busy_domain=dict(threshold=3))


def test_built_in_settings_take_the_namespaced_and_the_legacy_spelling():
    from tl_moe.cli import build_parser
    from tl_moe.pipeline.options import options_from_arguments

    def parsed(*argv):
        return options_from_arguments(build_parser().parse_args(["analyze", *argv]))

    namespaced = parsed("--probing.ks", "1,8", "--drivers.tokens", "5000", "--reweighting.draws", "7")
    legacy = parsed("--probe-ks", "1,8", "--driver-tokens", "5000", "--reweight-draws", "7")
    python = RunOptions(probing=dict(ks=(1, 8)), drivers=dict(tokens=5000), reweight_draws=7)
    assert namespaced == legacy == python
    assert namespaced.config("probing").ks == (1, 8) and namespaced.probe_ks == (1, 8)
    assert namespaced.config("drivers").tokens == 5000 and namespaced.config("reweighting").draws == 7
    assert parsed() == RunOptions() != python  # planted "no change": nothing given, every default
    assert parsed("--explain-causal-windows", "0").config("explain").causal_windows == 0
    # flat legacy names as keywords, and what results.json records under them
    flat = RunOptions(probe_ks=(2,), min_examples=7, probe_rows_per_class=None).to_dict()
    assert flat["probe_ks"] == (2,) and flat["min_examples"] == 7 and flat["probe_rows_per_class"] is None
    # the per-analysis dict and a legacy keyword merge (the legacy keyword last)
    merged = RunOptions(probing=dict(ks=(4,), min_examples=9), held_out_min_examples=11).config("probing")
    assert (merged.ks, merged.min_examples, merged.held_out_min_examples) == ((4,), 9, 11)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(probing=dict(kss=(1,))), "probing has no setting 'kss'; accepted: ks, min_examples"),
        (dict(probing=dict(ks=(0,))), "--probe-ks must be one or more positive integers"),
        (dict(probe_kss=(1,)), "there is no option 'probe_kss'"),
        (dict(drivers=dict(count=0)), "--drivers.count (--n-drivers) must be a positive integer, got 0."),
        (dict(reweighting=dict(factors=(1.0,))), "--reweight-factors [1.0] are not usable factors"),
        (dict(probing=[1, 8]), "probing settings must be a ProbingConfig or a dict of its fields"),
    ],
)
def test_bad_analysis_settings_are_refused_in_one_line(settings, message):
    with pytest.raises(InputError) as error:
        RunOptions(**settings)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_specialization_uses_probings_untrained_pass_only_when_probing_runs():
    """A declared relation (``uses``), not a guess from ``options.analyses``: analyze(model,
    analyses=["specialization"]) leaves options.analyses None and must not add an untrained pass."""
    from tl_moe.analysis import SpecializationConfig
    from tl_moe.pipeline.sections.specialization import Specialization

    def models(analyses, **options):
        run = RunContext(RunOptions(**options), analyses=analyses)
        return {need.model for need in Specialization().needs(run)}

    assert Specialization.uses == ("probing",)
    assert models(("specialization",)) == {"toy/moe-16x2"}
    inits = {f"untrained:init{k}:toy/moe-16x2" for k in range(1, SpecializationConfig().untrained_inits)}
    assert models(("probing", "specialization")) == {"toy/moe-16x2", "untrained:toy/moe-16x2"} | inits
    assert models(("probing", "specialization"), skip_untrained_null=True) == {"toy/moe-16x2"}


def test_the_command_lines_none_spelling_of_the_dense_baseline_works_from_python():
    """``--dense-baseline none`` on the command line; ``dense_baseline="none"`` from Python means the same."""
    assert RunOptions(dense_baseline="none").dense_baseline is None
    assert RunOptions(dense_baseline="None").dense_baseline is None
    assert RunOptions(dense_baseline="toy/dense").dense_baseline == "toy/dense"
