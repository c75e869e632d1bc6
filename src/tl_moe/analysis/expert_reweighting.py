"""Re-weighting and steering experts on a corpus: the whole method, from a model and its corpus.

:class:`ExpertReweighting` is configured from a :class:`~tl_moe.analysis.configs.ReweightingConfig`
and the run's :class:`~tl_moe.analysis.configs.Statistics`; called on a model and a corpus (a
``datasets.Dataset`` with ``text`` and ``domain`` columns) with the driver experts, it

1. splits the documents into a selection half and a held-out half (the drivers' halves:
   :func:`~tl_moe.analysis.edit_windows.held_out_windows`), each domain filled to ``config.tokens``
   tokens per half;
2. finds each domain's domain experts on the selection half alone
   (:func:`~tl_moe.analysis.reweighting.selection_domain_experts`) and builds its candidate sets
   (:func:`candidate_sets`: domain experts, driver experts, both);
3. runs :func:`~tl_moe.analysis.reweighting.reweighting_study` and, on the contrast
   :func:`steering_contrast` chooses, :func:`~tl_moe.analysis.steering.steering_study`.

These are forwards of their own (the edits are chosen on the selection half before the held-out half
is run), not part of a collection pass.

Example (a notebook, on a model the user holds)::

    from tl_moe.analysis import ExpertReweighting, ReweightingConfig, Statistics

    study = ExpertReweighting(ReweightingConfig(tokens=4000, draws=5), Statistics(seed=1))
    outcome = study(model, corpus, seq_len=128, batch_size=8, driver_experts=((1, 3), (2, 0)),
                    max_domain_experts=4)
    outcome.study.gains        # one row per domain: chosen re-weighting vs matched random experts
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pandas as pd
import torch

from tl_moe.analysis.configs import ReweightingConfig, Statistics
from tl_moe.analysis.domain_experts import DomainExperts
from tl_moe.analysis.drivers import HALVES_KEY
from tl_moe.analysis.edit_windows import Windows, held_out_windows, routed_counts
from tl_moe.analysis.reweighting import (
    ExpertSet,
    ReweightingStudy,
    reweighting_study,
    selection_domain_experts,
)
from tl_moe.analysis.splits import document_split
from tl_moe.analysis.stats import MIN_DOCUMENTS
from tl_moe.analysis.steering import SteeringStudy, steering_study
from tl_moe.errors import InputError
from tl_moe.settings import is_integer

__all__ = [
    "Capacity",
    "ExpertReweighting",
    "ReweightingOutcome",
    "SteeringContrast",
    "candidate_sets",
    "held_out_capacity",
    "steering_contrast",
    "testable_groups",
]

Capacity = dict[str, tuple[int, int]]
"""``{group: (documents in the split, documents on the held-out half)}``."""


def held_out_capacity(groups: Sequence[Any], rows: Sequence[int] | None = None) -> Capacity:
    """``{group: (documents, documents on the held-out half)}`` of the corpus rows ``rows`` (all rows
    when None; ``groups`` gives each of those rows' group): the most held-out documents any token
    budget can reach, by the drivers' document split."""
    index = torch.arange(len(groups)) if rows is None else torch.as_tensor(list(rows), dtype=torch.long)
    half = document_split(index, key=HALVES_KEY).tolist()
    out: dict[str, list[int]] = {}
    for group, side in zip(groups, half, strict=True):
        counts = out.setdefault(str(group), [0, 0])
        counts[0] += 1
        counts[1] += side
    return {group: (total, held_out) for group, (total, held_out) in sorted(out.items())}


def testable_groups(capacity: Capacity, min_documents: int = MIN_DOCUMENTS) -> list[str]:
    """The groups whose held-out half can reach ``min_documents`` documents, most documents first."""
    able = [g for g, (_, held_out) in capacity.items() if held_out >= min_documents]
    return sorted(able, key=lambda g: (-capacity[g][0], g))


class SteeringContrast(NamedTuple):
    """The two groups steering contrasts: two domains (``domain`` None), or two languages of ``domain``."""

    domain: str | None
    a: str
    b: str


def steering_contrast(
    given: Sequence[str] | None, domains: Sequence[Any], min_documents: int = MIN_DOCUMENTS
) -> SteeringContrast:
    """The steering contrast: ``given`` (``(A, B)`` domains, or ``("DOMAIN:A", "B")`` languages) when
    not None; else, from each corpus row's domain ``domains``, the two domains with the most documents
    among those whose held-out half can reach ``min_documents`` documents, and without two such the two
    largest domains (steering is then untestable on this corpus)."""
    if given is not None:
        first, second = given
        if ":" in first:
            domain, first = first.split(":", 1)
            return SteeringContrast(domain, first, second)
        return SteeringContrast(None, first, second)
    capacity = held_out_capacity([str(d) for d in domains])
    if len(capacity) < 2:
        raise InputError("steering needs two domains; give --steer-contrast DOMAIN:A,B for two languages.")
    testable = testable_groups(capacity, min_documents)
    if len(testable) >= 2:
        return SteeringContrast(None, testable[0], testable[1])
    largest = sorted(capacity, key=lambda g: (-capacity[g][0], g))
    return SteeringContrast(None, largest[0], largest[1])


def candidate_sets(
    domain_sets: Mapping[str, ExpertSet], drivers: ExpertSet, domains: Sequence[str]
) -> tuple[dict[str, dict[str, ExpertSet]], pd.DataFrame]:
    """Each domain's candidate expert sets: its domain experts, the driver experts and their union (the
    union only when it has domain experts), and one row per (domain, set) describing them."""
    candidates, rows = {}, []
    for d in sorted(set(domains)):
        own = tuple(domain_sets.get(d, ()))
        sets = {"domain experts": own, "driver experts": tuple(drivers)}
        if own:
            sets["domain + driver experts"] = tuple(sorted(set(own) | set(drivers)))
        candidates[d] = sets
        for name, s in sets.items():
            experts = " ".join(f"L{layer}E{e}" for layer, e in s)
            rows.append({"domain": d, "expert set": name, "experts": experts, "n experts": len(s)})
    return candidates, pd.DataFrame(rows)


@dataclass(frozen=True)
class ReweightingOutcome:
    """What :class:`ExpertReweighting` returns.

    Attributes:
        study: the re-weighting study (grid, gains, matrix, controls).
        steering: the switching study, or None (a contrast group without selection windows).
        candidates: one row per (domain, candidate set): its experts.
        capacity: each domain's documents in the split and on the held-out half, whatever the budget.
        steering_capacity: the same for the two steering groups.
        min_documents: the fewest held-out documents behind an interval in this run.
    """

    study: ReweightingStudy
    steering: SteeringStudy | None
    candidates: pd.DataFrame
    capacity: Capacity = field(default_factory=dict)
    steering_capacity: Capacity = field(default_factory=dict)
    min_documents: int = MIN_DOCUMENTS


class ExpertReweighting:
    """Re-weighting domain / driver experts and SteerMoE-style switching, reported on held-out documents.

    Args:
        config: tokens per half, factors, control draws, steering contrast (defaults: ReweightingConfig()).
        statistics: seed, bootstrap resamples, false-discovery rate and permutations (defaults: Statistics()).
    """

    def __init__(self, config: ReweightingConfig | None = None, statistics: Statistics | None = None) -> None:
        self.config = config or ReweightingConfig()
        self.statistics = statistics or Statistics()

    def __call__(
        self,
        model: Any,
        dataset: Any,
        *,
        seq_len: int,
        batch_size: int,
        driver_experts: ExpertSet,
        max_domain_experts: int,
        domain_rule: DomainExperts | None = None,
        progress: bool = False,
    ) -> ReweightingOutcome:
        """Run both studies on ``model`` (a hooked MoE) over ``dataset``.

        Args:
            driver_experts: ``((layer, expert), ...)`` the driver experts (a candidate set of every domain).
            max_domain_experts: most domain experts per domain (highest score first).
            domain_rule: the domain-expert rule whose ``threshold`` / ``min_tokens`` apply (default:
                ``DomainExperts()``).
        """
        rule = domain_rule or DomainExperts()
        stats = self.statistics
        layers = tuple(model.moe_cfg.sparse_layers)
        _check_arguments(seq_len, batch_size, max_domain_experts)
        _check_experts(driver_experts, layers, model.moe_cfg.num_experts)
        self.check_contrast(dataset)
        selection, evaluation = held_out_windows(
            dataset, model.tokenizer, seq_len=seq_len, tokens_per_group=self.config.tokens
        )
        routed = routed_counts(model, selection, layers, batch_size=batch_size)
        domain_sets, _ = selection_domain_experts(
            routed,
            selection,
            layers,
            threshold=rule.threshold,
            min_tokens=rule.min_tokens,
            fdr=stats.fdr,
            n_permutations=stats.permutations,
            seed=stats.seed,
            max_experts=max_domain_experts,
            min_documents=stats.min_documents,
        )
        candidates, frame = candidate_sets(domain_sets, tuple(sorted(driver_experts)), selection.group)
        study = reweighting_study(
            model,
            selection,
            evaluation,
            candidates,
            factors=self.config.factors,
            n_draws=self.config.draws,
            n_resamples=stats.bootstrap_resamples,
            seed=stats.seed,
            batch_size=batch_size,
            routed_selection=routed,
            layers=layers,
            progress=progress,
            min_documents=stats.min_documents,
        )
        steering = self.steering(
            model, dataset, selection, evaluation, seq_len=seq_len, batch_size=batch_size, progress=progress
        )
        capacity = held_out_capacity([str(d) for d in dataset["domain"]])
        return ReweightingOutcome(
            study, steering, frame, capacity, self.steering_capacity(dataset), stats.min_documents
        )

    def check_contrast(self, dataset: Any) -> None:
        """Refuse, in one line, a configured steering contrast naming a group ``dataset`` does not hold."""
        if self.config.steer_contrast is None:
            return
        domain, a, b = self.contrast(dataset)
        domains = sorted({str(d) for d in dataset["domain"]})
        if domain is not None and domain not in domains:
            raise InputError(f"--steer-contrast names the domain {domain!r}; accepted: one of {domains}.")
        if domain is None:
            groups, what = domains, "domains"
        else:
            groups = sorted({str(dataset["language"][i]) for i in _rows_of(dataset, domain)})
            what = f"languages of {domain}"
        unknown = [g for g in (a, b) if g not in groups]
        if unknown:
            raise InputError(
                f"--steer-contrast names {unknown}, not in the corpus; accepted: two {what} {groups}."
            )

    def contrast(self, dataset: Any) -> SteeringContrast:
        """The steering contrast on ``dataset`` (:func:`steering_contrast` of the config's)."""
        return steering_contrast(self.config.steer_contrast, dataset["domain"], self.statistics.min_documents)

    def steering(
        self,
        model: Any,
        dataset: Any,
        selection: Windows | None,
        evaluation: Windows | None,
        *,
        seq_len: int,
        batch_size: int,
        progress: bool = False,
    ) -> SteeringStudy | None:
        """The switching study on the contrast's groups; ``selection`` / ``evaluation`` are the domain
        windows (unused, may be None, when the contrast is two languages of one domain: its own windows
        are cut then). None when a contrast group has no selection window."""
        domain, a, b = self.contrast(dataset)
        if domain is not None:
            selection, evaluation = held_out_windows(
                dataset,
                model.tokenizer,
                seq_len=seq_len,
                tokens_per_group=self.config.tokens,
                group_column="language",
                rows=_rows_of(dataset, domain),
            )
        if a not in selection.group or b not in selection.group:
            return None
        return steering_study(
            model,
            selection,
            evaluation,
            (a, b),
            n_draws=self.config.draws,
            n_resamples=self.statistics.bootstrap_resamples,
            seed=self.statistics.seed,
            batch_size=batch_size,
            progress=progress,
            min_documents=self.statistics.min_documents,
        )

    def steering_capacity(self, dataset: Any) -> Capacity:
        """Documents in the split and on the held-out half of the two steering groups."""
        domain, a, b = self.contrast(dataset)
        if domain is None:
            capacity = held_out_capacity([str(d) for d in dataset["domain"]])
        else:
            rows = _rows_of(dataset, domain)
            capacity = held_out_capacity([str(dataset["language"][i]) for i in rows], rows)
        return {g: capacity.get(g, (0, 0)) for g in (a, b)}


def _rows_of(dataset: Any, domain: str) -> list[int]:
    """The corpus rows of ``domain``."""
    return [i for i, d in enumerate(dataset["domain"]) if str(d) == domain]


def _check_arguments(seq_len: Any, batch_size: Any, max_domain_experts: Any) -> None:
    """Refuse, in one line, a window length, batch size or domain-expert count no study can use."""
    least = {
        "seq_len": (seq_len, 2),
        "batch_size": (batch_size, 1),
        "max_domain_experts": (max_domain_experts, 0),
    }
    for name, (value, smallest) in least.items():
        if not is_integer(value) or value < smallest:
            raise InputError(
                f"ExpertReweighting {name} must be an integer of at least {smallest}, got {value!r}."
            )


def _check_experts(experts: ExpertSet, layers: tuple[int, ...], num_experts: int) -> None:
    """Refuse, in one line, driver experts that are not (sparse layer, expert index) pairs of the model."""
    bad = [
        pair
        for pair in experts
        if len(tuple(pair)) != 2 or tuple(pair)[0] not in layers or not 0 <= tuple(pair)[1] < num_experts
    ]
    if bad:
        raise InputError(
            f"ExpertReweighting driver_experts {bad} are not experts of this model; accepted: (layer, expert) "
            f"pairs with layer in {layers} and expert in 0..{num_experts - 1}."
        )
