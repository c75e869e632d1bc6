"""The labeling method as a run orchestrates it, callable on a model the user holds.

:class:`ExpertLabeler` is configured by an :class:`~tl_moe.analysis.configs.ExplainConfig` (the explainer,
its scorers, the causal checks) and the run's :class:`~tl_moe.analysis.configs.Statistics` (seed,
bootstrap resamples, fewest documents behind an interval). Called on the finished
:class:`~tl_moe.explain.examples.ExpertExamples` of a collection pass, it makes each chosen expert's
record, labels and scores it beside its controls (:func:`~tl_moe.explain.runner.label_experts`) and, when
asked, runs the causal checks (:func:`~tl_moe.explain.causal.causal_checks`), returning a frozen
:class:`LabelOutcome`::

    labeler = ExpertLabeler(ExplainConfig(causal_windows=0), Statistics(seed=0), progress=False)
    outcome = labeler(examples, model.tokenizer, readout=LogitReadout.from_model(model),
                      experts=[(1, 0), (1, 3), (1, 5)])
    outcome.labeling.frame[["layer", "expert", "label", "concept_balanced_accuracy"]]

The shuffled-label control pairs each expert with another expert *of those labeled* in its layer, so
label at least two experts per layer for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl_moe.analysis.configs import ExplainConfig, Statistics
from tl_moe.errors import InputError
from tl_moe.explain.causal import CausalResult, causal_checks
from tl_moe.explain.checks import check_explain_config
from tl_moe.explain.clients import CachedChatClient, client_from_spec
from tl_moe.explain.examples import ExpertExamples, ExpertRecord
from tl_moe.explain.explainers import (
    DissectionExplainer,
    Explainer,
    Explanation,
    LMExplainer,
    TokenSetBaseline,
)
from tl_moe.explain.runner import LabelingResult, label_experts
from tl_moe.explain.scorers import ConceptScorer, DetectionScorer, FuzzingScorer, IntruderScorer, Scorer

__all__ = ["ExpertLabeler", "LabelOutcome"]


@dataclass(frozen=True)
class LabelOutcome:
    """What :class:`ExpertLabeler` found.

    Attributes:
        records: the labeled experts' records (contexts for explaining, positives and negatives for scoring).
        labeling: one row per expert and the per-layer summary with the controls (:class:`LabelingResult`).
        explainer: the explainer's name.
        main_scorer: the scorer of the headline scores (``concept`` when it ran, else the first).
        causal: the causal checks of the labels (None when they did not run).
    """

    records: tuple[ExpertRecord, ...]
    labeling: LabelingResult
    explainer: str
    main_scorer: str
    causal: CausalResult | None = None


class ExpertLabeler:
    """Label experts and score each label on held-out documents beside its controls (module docstring).

    Args:
        config: the explainer, its scorers, concurrency, request limits and the causal windows.
        statistics: the seed of every draw, the bootstrap resamples and the fewest documents an interval needs.
        out: folder of the labels' JSONL results and of a language model's answer cache (None: neither kept).
        progress: show progress bars.
    """

    def __init__(
        self,
        config: ExplainConfig | None = None,
        statistics: Statistics | None = None,
        *,
        out: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        self.config = ExplainConfig() if config is None else config
        self.statistics = Statistics() if statistics is None else statistics
        self.out = None if out is None else Path(out)
        self.progress = progress
        check_explain_config(self.config)

    @property
    def offline(self) -> bool:
        """Whether the labels come from concept dissection rather than a language model."""
        return self.config.explainer == "offline"

    @property
    def scorer_names(self) -> tuple[str, ...]:
        """The scorers that run: the config's, else ``concept`` offline and ``detection`` with a language model."""
        return self.config.scorers or (("concept",) if self.offline else ("detection",))

    @property
    def main_scorer(self) -> str:
        return "concept" if "concept" in self.scorer_names else self.scorer_names[0]

    def records(
        self,
        examples: ExpertExamples,
        tokenizer: Any,
        readout: Any = None,
        experts: Sequence[tuple[int, int]] | None = None,
    ) -> list[ExpertRecord]:
        """The records of ``experts`` (``(layer, expert)`` pairs; None: every expert of every layer), with
        logit-lens tokens through ``readout`` (a :class:`~tl_moe.analysis.readout.LogitReadout`) when given."""
        seed = self.statistics.seed
        if experts is None:
            return examples.records(tokenizer, readout, seed=seed)
        lens = examples.lens_tokens(readout, tokenizer) if readout is not None else {}
        bad = [
            (layer, e)
            for layer, e in experts
            if layer not in examples.layers or not 0 <= e < examples.n_experts
        ]
        if bad:
            raise InputError(f"experts {bad} are not in the examples (layers {list(examples.layers)}, "
                             f"experts 0..{examples.n_experts - 1}); accepted: (layer, expert) pairs of those.")  # fmt: skip
        return [
            examples.record(layer, e, tokenizer, lens_tokens=lens.get((layer, e), ()), seed=seed)
            for layer, e in experts
        ]

    def explainer_and_scorers(self, examples: ExpertExamples) -> tuple[Explainer, list[Scorer]]:
        """The explainer the config names and its scorers (a language model's answers cached in ``out``)."""
        config, seed = self.config, self.statistics.seed
        client: Any = None
        if not self.offline:
            client = client_from_spec(config.explainer, model=config.model, timeout=config.timeout,
                                      max_retries=config.retries)  # fmt: skip
            if self.out is not None:
                client = CachedChatClient(client, self.out / "cache.sqlite")
        factories = {
            "concept": lambda: ConceptScorer(examples.concept_names),
            "detection": lambda: DetectionScorer(client, seed=seed),
            "fuzzing": lambda: FuzzingScorer(client, seed=seed),
            "intruder": lambda: IntruderScorer(client, seed=seed),
        }
        explainer = DissectionExplainer(examples) if client is None else LMExplainer(client)
        return explainer, [factories[name]() for name in self.scorer_names]

    def label(
        self, records: Sequence[ExpertRecord], explainer: Explainer, scorers: Sequence[Scorer]
    ) -> LabelingResult:
        """Every record labeled and scored with its controls (the token-set baseline offline only: with a
        language model it would double the requests)."""
        stats = self.statistics
        return label_experts(
            records, explainer, scorers, concurrency=self.config.concurrency,
            results_path=None if self.out is None else self.out / "results.jsonl",
            shuffle_seed=stats.seed, progress=self.progress,
            baseline=TokenSetBaseline() if self.offline else None,
            n_resamples=stats.bootstrap_resamples, min_documents=stats.min_documents,
        )  # fmt: skip

    def causal(
        self, model: Any, dataset: Any, examples: ExpertExamples, labeling: LabelingResult, seq_len: int
    ) -> CausalResult | None:
        """The causal checks of every label a rule can evaluate, on the ``causal`` documents of
        ``dataset`` (None when the config asks for none or no label has a rule)."""
        labels: list[Explanation] = [
            e for e in labeling.explanations.values() if e.ok and (e.rule or e.concept) is not None
        ]
        if self.config.causal_windows <= 0 or not labels:
            return None
        return causal_checks(
            model, dataset, examples, labels, seq_len=seq_len, max_windows=self.config.causal_windows,
            n_resamples=self.statistics.bootstrap_resamples, seed=self.statistics.seed,
            min_documents=self.statistics.min_documents, progress=self.progress,
        )  # fmt: skip

    def __call__(
        self,
        examples: ExpertExamples,
        tokenizer: Any,
        *,
        readout: Any = None,
        experts: Sequence[tuple[int, int]] | None = None,
        model: Any = None,
        dataset: Any = None,
        seq_len: int = 128,
    ) -> LabelOutcome:
        """Label ``experts`` (None: all) of ``examples``; the causal checks (``config.causal_windows`` > 0)
        run ``model`` on the documents of ``dataset`` the examples came from, in windows of ``seq_len``."""
        if self.config.causal_windows > 0 and (model is None or dataset is None):
            raise InputError(f"the causal checks (causal_windows={self.config.causal_windows}) need model= and "
                             "dataset=; pass them, or ExplainConfig(causal_windows=0) for none.")  # fmt: skip
        if experts is not None and not len(experts):
            raise InputError(
                "ExpertLabeler experts is empty; accepted: (layer, expert) pairs, or None for all."
            )
        records = self.records(examples, tokenizer, readout, experts)
        if not records:
            raise InputError("ExpertLabeler found no expert to label in the examples; accepted: examples "
                             "with routed tokens of at least one of the experts asked.")  # fmt: skip
        explainer, scorers = self.explainer_and_scorers(examples)
        labeling = self.label(records, explainer, scorers)
        causal = self.causal(model, dataset, examples, labeling, seq_len)
        return LabelOutcome(tuple(records), labeling, explainer.name, self.main_scorer, causal)
