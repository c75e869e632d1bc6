# %% [markdown]
# # Held-out probing, drivers and labels without the pipeline
#
# Each analysis of `tl-moe analyze` is a configured object in `tl_moe.analysis` (labels: `tl_moe.explain`)
# that takes what hooks collect and returns a frozen outcome: no `tl_moe.pipeline`, no report. Here
# on the shipped `toy/moe-8x2` and its dense twin, offline, with small budgets (a real run uses more
# tokens; where an interval needs more documents than these budgets reach, the outcome says so).

# %%
import tl_moe
from tl_moe.analysis import DriversConfig, DriverStudy, HeldOutProbing, ProbingConfig, Statistics
from tl_moe.analysis.configs import ExplainConfig
from tl_moe.analysis.readout import LogitReadout
from tl_moe.collect import collect, domain_names
from tl_moe.data import TokenConceptLabeler
from tl_moe.data.corpus import load_corpus
from tl_moe.explain import ExpertExamplesAccumulator, ExpertLabeler

model, dense = tl_moe.load("toy/moe-8x2", device="cpu"), tl_moe.load("toy/dense", device="cpu")
corpus = load_corpus()["validation"].shuffle(seed=0)
concepts = TokenConceptLabeler()  # token-level concept labels (digits, punctuation, code keywords, ...)
statistics = Statistics(seed=0, bootstrap_resamples=500)  # the seed, the document split, the resamples

# %% Held-out probing with its controls: units chosen on half of the documents, scored on the other half.
probing = HeldOutProbing.of(
    model.moe_cfg,
    dense.moe_cfg,
    layers=model.moe_cfg.sparse_layers[-1:],
    config=ProbingConfig(ks=(1, 4)),
    statistics=statistics,
)
stored = {
    name: collect(net, corpus, {"s": store}, max_tokens=60_000, concept_labeler=concepts, progress=False)["s"]
    for name, net, store in (("moe", model, probing.expert_store()), ("dense", dense, probing.dense_store()))
}
found = probing(stored["moe"], stored["dense"])
print(
    found.comparisons.query("k == 1")[
        ["comparison", "metric", "estimate", "ci_low", "ci_high", "n_concepts"]
    ].to_string()
)
print(found.notes)  # what is missing and why (here: no untrained MoE was given)
assert "moe_vs_dense_on_routed_tokens_matched_count" in set(found.comparisons["comparison"])

# %% Driver experts of the last sparse layer: chosen on the selection half, reported against controls.
drivers = DriverStudy(
    model.moe_cfg.sparse_layers[-1:],
    model.moe_cfg.num_experts,
    DriversConfig(tokens=18_000, count=2),
    statistics,
)
gathered = collect(model, corpus, drivers.accumulators(), max_tokens=18_000, progress=False)
drivers_found = drivers(**gathered)
print(
    drivers_found.comparison.T.to_string()
)  # drivers, their routing-matched controls, the paired difference, 95% intervals

# %% Labels for four experts, scored on held-out documents beside a shuffled-label control.
examples = collect(
    model,
    corpus,
    {"ex": ExpertExamplesAccumulator(model, domain_names(corpus), concepts.concept_names)},
    max_tokens=30_000,
    concept_labeler=concepts,
    progress=False,
)["ex"]
labeler = ExpertLabeler(ExplainConfig(causal_windows=0), statistics, progress=False)
layer = model.moe_cfg.sparse_layers[-1]
labels = labeler(
    examples, model.tokenizer, readout=LogitReadout.from_model(model), experts=[(layer, e) for e in range(4)]
)
print(
    labels.labeling.frame[
        ["layer", "expert", "label", "concept_balanced_accuracy", "concept_shuffled_balanced_accuracy"]
    ].to_string()
)
