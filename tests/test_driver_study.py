"""DriverStudy and AssociationStudy as a notebook uses them: built from their configs and Statistics, fed
accumulator results, nothing of tl_moe.pipeline imported."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from tl_moe.analysis import AssociationStudy, DriversConfig, DriverStudy, Statistics
from tl_moe.analysis.drivers import HALVES_KEY, ExpertSaliencyResult
from tl_moe.analysis.splits import document_split
from tl_moe.analysis.token_association import RoutingRecordsResult
from tl_moe.collect.expert_effects import ExpertEffectsResult
from tl_moe.errors import InputError

DRIVER, NULL = 2, 1  # the planted driver (removal raises the loss 0.5 nats/token) and a no-effect expert


def _planted(n_docs: int = 80, seed: int = 0) -> tuple[ExpertEffectsResult, ExpertSaliencyResult]:
    """One layer of four experts: removing expert 2 raises each position's loss by 0.5, removing any other
    changes nothing (noise of sd 0.2 per position); expert 1's routing share is the closest to expert 2's."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(20, 40, n_docs)
    mean = np.zeros((1, 4))
    mean[0, DRIVER] = 0.5
    sums = mean[None, :, :, None] * counts + rng.normal(0, 0.2, (2, 1, 4, n_docs)) * np.sqrt(counts)
    effects = ExpertEffectsResult(("remove", "zero"), (0,), torch.from_numpy(sums), torch.from_numpy(counts))
    routed = torch.tensor([[[100, 150, 160, 300]], [[100, 150, 160, 300]]])
    return effects, ExpertSaliencyResult((0,), routed, routed.double() * 0.1, routed.double() * 5.0)


def _report_effect(effects: ExpertEffectsResult, expert: int) -> float:
    """The removal effect of ``expert`` recomputed by hand on the report half (Σ sums / Σ positions)."""
    counts = effects.counts.numpy()
    docs = np.flatnonzero(counts > 0)
    report = docs[document_split(docs, key=HALVES_KEY) == 1]
    return float(effects.sums[0, 0, expert].numpy()[report].sum() / counts[report].sum())


def test_the_study_finds_the_planted_driver_and_its_no_effect_control():
    effects, saliency = _planted()
    study = DriverStudy((0,), 4, DriversConfig(count=1), Statistics(seed=3))
    outcome = study(effects, saliency)
    assert outcome.drivers["expert"].tolist() == [DRIVER]
    assert outcome.controls["expert"].tolist() == [NULL]  # the closest routing share, same layer
    assert outcome.controls["control match"].tolist() == ["same layer"]
    rows = outcome.comparison.set_index(["edit", "group"])
    driver, control = rows.loc[("remove", "driver experts")], rows.loc[("remove", "matched controls")]
    effect = "mean effect (nats/token, report half)"
    assert driver[effect] == pytest.approx(_report_effect(effects, DRIVER))
    assert control[effect] == pytest.approx(_report_effect(effects, NULL))
    assert driver["ci low"] > 0.3 and driver["ci low"] <= 0.5 <= driver["ci high"]  # planted +0.5
    assert control["ci low"] <= 0 <= control["ci high"]  # planted none
    assert rows.loc[("remove", "driver − control"), "ci low"] > 0.3
    assert outcome.estimates is None and outcome.paired is None and outcome.domain_overlap is None
    with pytest.raises(InputError, match="effects cover layers"):
        DriverStudy((0, 1), 4, DriversConfig(count=1))(effects, saliency)


def test_the_count_left_at_its_default_is_fitted_and_an_explicit_one_too_large_is_refused():
    assert DriverStudy((0,), 4).n_drivers == 2  # default 8, half of 4 experts
    assert DriverStudy((0, 1), 16).n_drivers == 8
    with pytest.raises(InputError, match="accepted: 1 to 2"):
        _ = DriverStudy((0,), 4, DriversConfig(count=3)).n_drivers
    with pytest.raises(InputError, match=r"--drivers.count \(--n-drivers\) must be a positive integer"):
        DriverStudy((0,), 4, DriversConfig(count=0))


def test_the_accumulators_are_named_as_the_study_takes_their_results():
    gathered = DriverStudy((1, 3), 8, DriversConfig(tokens=500)).accumulators()
    assert set(gathered) == {"effects", "saliency", "estimate"}
    assert gathered["effects"].max_tokens == 500 and gathered["estimate"].max_tokens == 500
    assert gathered["saliency"].layers == (1, 3) and gathered["saliency"].n_experts == 8


def test_the_position_effect_follows_the_drivers_found():
    """A planted position effect: the driver (expert 2) takes every early token of the report half, its
    control (expert 1) a token at every position alike."""
    rng = np.random.default_rng(0)
    n_docs, per_doc = 80, 24
    doc = np.repeat(np.arange(n_docs), per_doc)
    position = np.tile(np.arange(per_doc) % 8, n_docs)
    token = rng.integers(0, 5, doc.size)
    early = position < 3
    first = np.where(early, DRIVER, rng.choice([0, 3], doc.size))
    second = np.where(rng.random(doc.size) < 0.5, NULL, np.where(first == 0, 3, 0))
    experts = np.stack([first, second], -1)[:, None, :]  # [token, layer, k]
    records = RoutingRecordsResult(
        layers=(0,),
        token_index=torch.arange(doc.size),
        doc_index=torch.from_numpy(doc),
        doc_position=torch.from_numpy(np.tile(np.arange(per_doc), n_docs)),
        token_id=torch.from_numpy(token),
        experts=torch.from_numpy(experts),
    )
    drivers = pd.DataFrame(
        {"layer": [0] * 4, "expert": range(4), "driver": [False, False, True, False]}
    ).assign(**{"control for": ["", "L0E2", "", ""]})
    outcome = AssociationStudy(4, statistics=Statistics(bootstrap_resamples=200))(records, drivers, position)
    effects = outcome.positions.effects.set_index("effect")
    assert effects.loc["drivers: early − late", "estimate"] == pytest.approx(1.0)
    assert (
        effects.loc["controls: early − late", "ci low"]
        <= 0
        <= effects.loc["controls: early − late", "ci high"]
    )


def test_the_studies_import_nothing_of_the_pipeline():
    code = (
        "import sys, tl_moe.analysis.driver_study, tl_moe.analysis.association_study\n"
        "print(sorted(m for m in sys.modules if m.startswith(('tl_moe.pipeline', 'tl_moe.report'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
