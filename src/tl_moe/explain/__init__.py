"""Automatic labeling of experts: examples from the collection pass, explainers, scorers with controls,
and a concurrent, cached, resumable runner.

    acc = ExpertExamplesAccumulator(model, domain_names(ds), TokenConceptLabeler().concept_names)
    examples = collect(model, ds, {"ex": acc}, concept_labeler=TokenConceptLabeler())["ex"]
    records = examples.records(model.tokenizer, LogitReadout.from_model(model))
    result = label_experts(records, DissectionExplainer(examples), [ConceptScorer(examples.concept_names)],
                           baseline=TokenSetBaseline())
    result.frame      # one row per expert: label and its rule, balanced accuracy, F1, precision, recall,
                      # AUC; the shuffled-label control and the token-set baseline on the same items
    result.summary    # per layer and metric: mean [CI] vs shuffled control [CI] vs baseline [CI] vs chance

Or as a run does it, configured by ``ExplainConfig`` and ``Statistics`` (records, explainer, scorers,
controls and causal checks in one call; :mod:`tl_moe.explain.labeler`):
``ExpertLabeler(ExplainConfig(causal_windows=0), Statistics())(examples, model.tokenizer)``.

With a language model: ``client = CachedChatClient(OpenAIChatClient(url, model), "cache.sqlite")``,
``LMExplainer(client)`` and ``DetectionScorer(client)`` / ``FuzzingScorer`` / ``IntruderScorer``.
"""

from tl_moe.explain.clients import (
    CachedChatClient,
    ChatClient,
    OpenAIChatClient,
    TransformersChatClient,
    client_from_spec,
)
from tl_moe.explain.examples import SPLITS, Context, ExpertExamples, ExpertExamplesAccumulator, ExpertRecord
from tl_moe.explain.explainers import (
    DissectionExplainer,
    Explainer,
    Explanation,
    LMExplainer,
    TokenSetBaseline,
    parse_label,
)
from tl_moe.explain.labeler import ExpertLabeler, LabelOutcome
from tl_moe.explain.labels import LabelRule, choose_label
from tl_moe.explain.runner import LabelingResult, bootstrap_mean, label_experts, shuffled_partners, summarize
from tl_moe.explain.scorers import (
    ConceptScorer,
    DetectionScorer,
    FuzzingScorer,
    IntruderScorer,
    Score,
    Scorer,
    detection_metrics,
    parse_verdicts,
)

__all__ = [
    "SPLITS",
    "CachedChatClient",
    "ChatClient",
    "ConceptScorer",
    "Context",
    "DetectionScorer",
    "DissectionExplainer",
    "ExpertExamples",
    "ExpertExamplesAccumulator",
    "ExpertLabeler",
    "ExpertRecord",
    "Explainer",
    "Explanation",
    "FuzzingScorer",
    "IntruderScorer",
    "LMExplainer",
    "LabelOutcome",
    "LabelRule",
    "TokenSetBaseline",
    "LabelingResult",
    "OpenAIChatClient",
    "Score",
    "Scorer",
    "TransformersChatClient",
    "bootstrap_mean",
    "choose_label",
    "client_from_spec",
    "detection_metrics",
    "label_experts",
    "parse_label",
    "parse_verdicts",
    "shuffled_partners",
    "summarize",
]
