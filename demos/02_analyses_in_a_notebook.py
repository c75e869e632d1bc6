# %% [markdown]
# # Expert-level analyses from a notebook
#
# The same analyses `tl-moe analyze` runs, first through the pipeline on a loaded model (typed
# results, no report unless you ask for one), then step by step: one streaming pass feeds several
# accumulators, then pure functions score the results. Offline, on the shipped toy MoE and the
# embedded corpus; swap in any supported model and corpus. Each `# %%` starts a notebook cell
# (VS Code, Jupyter with jupytext, or `python demos/02_analyses_in_a_notebook.py`).

# %%
import torch

import tl_moe
from tl_moe.analysis.activations import TokenActivationStore
from tl_moe.analysis.attribution import decompose_logits
from tl_moe.analysis.clustering import cluster_vocabulary
from tl_moe.analysis.concept_probing import expert_probing_hooks, experts_near_best, probe_experts
from tl_moe.analysis.domain_experts import DomainExperts
from tl_moe.analysis.logit_lens_accumulator import ExpertLogitLensAccumulator
from tl_moe.analysis.routing_stats import routed_tokens_by_domain, routed_tokens_by_group, tokens_by_domain
from tl_moe.analysis.specialization import js_divergence, specialization_scores
from tl_moe.collect import collect, domain_names
from tl_moe.data import TokenConceptLabeler
from tl_moe.data.corpus import load_corpus
from tl_moe.pipeline import analysis_names, analyze
from tl_moe.pipeline.context import unembedding

model = tl_moe.load("toy/moe-16x2", device="cpu")

# %% The pipeline on the model you hold: one pass feeds every chosen analysis (see analysis_names()).
print("analyses:", ", ".join(analysis_names()))
summary = analyze(model, analyses=["domains", "specialization"], max_tokens=5_000, progress=False)
print(summary["specialization"].to_frame())  # per layer (block index) and measure
print(summary["domains"].top[["layer", "expert", "score", "favoured_domain"]].head(5))

# %% Step by step: the same building blocks.
cfg = model.moe_cfg
corpus = load_corpus()["validation"].shuffle(seed=0)
domains = domain_names(corpus)
groups = cluster_vocabulary(unembedding(model), n_clusters=50, seed=0)  # token clusters of W_U

# %% One pass, several accumulators (resumable with checkpoint_dir=..., shardable with shard=...).
results = collect(
    model,
    corpus,
    {
        "by_domain": routed_tokens_by_domain(cfg, len(domains)),
        "by_group": routed_tokens_by_group(cfg, groups),
        "domain_tokens": tokens_by_domain(len(domains)),
        "lens": ExpertLogitLensAccumulator(model, top_n=3, token_groups=groups),
        "store": TokenActivationStore(expert_probing_hooks(cfg)),  # expert_post + topk_indices
    },
    max_tokens=20_000,
    concept_labeler=TokenConceptLabeler(),
)

# %% Jensen-Shannon divergence in bits: bounded by 1, symmetric, zero on identical inputs.
print(
    "JSD([1,0] || [0,1]) =", float(js_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))), "bit"
)
routing = specialization_scores(results["by_group"], kind="routing", layers=cfg.sparse_layers)
functional = specialization_scores(
    results["lens"].dense_counts(), kind="functional", layers=cfg.sparse_layers
)
print(routing.layer_summary().assign(functional=functional.layer_summary()["mean_excess"]))

# %% Domain experts: who is favoured by one domain (routing share normalized by domain size).
experts = DomainExperts(threshold=0.5).fit(
    results["by_domain"], results["domain_tokens"], list(domains), layers=cfg.sparse_layers
)
print(experts.top(5)[["layer", "expert", "score", "favoured_domain", "lift"]])

# %% k-sparse probing of expert neurons (balanced, 75/25 split, F1 on held-out tokens).
probes = probe_experts(
    results["store"], cfg.sparse_layers, cfg.num_experts, {"ks": (1, 8), "min_examples": 30}
)
print(experts_near_best(probes, k=1).sort_values("best_f1", ascending=False).head(8))

# %% Exact direct logit attribution of one prompt: every component's share sums to the logits.
tokens = model.to_tokens("The derivative of \\sin x is")
with torch.no_grad():
    parts = decompose_logits(model, tokens)
    print("max |sum of components - logits|:", float((parts.total() - model(tokens)).abs().max()))
