# %% [markdown]
# # Driver experts: causal effects, a first-order screen, and steering
#
# Which experts drive the output? The exact answer is an edited forward per expert: remove it from
# routing (tokens re-route) or zero its contribution, and measure the next-token loss. A first-order
# estimate (−w·∂L/∂w per slot, one backward per batch) screens all experts at once; it is checked here
# against the exact zeroing effect on the same tokens (on the toy it ranks the last layer's experts
# poorly; the README gives its agreement over all layers, with its interval). Then the interventions behind the `reweighting`
# analysis: scale an expert's mixing weight, or switch it on for every token. Offline, on the shipped
# toy MoE and the embedded corpus. Each `# %%` starts a notebook cell.

# %%
import scipy.stats
import torch

import tl_moe
from tl_moe.analysis.effect_estimate import FirstOrderEffects
from tl_moe.collect import collect
from tl_moe.collect.expert_effects import ExpertEffects
from tl_moe.data.corpus import load_corpus
from tl_moe.interventions import activate_experts, scale_expert_weights

model = tl_moe.load("toy/moe-16x2", device="cpu")
cfg = model.moe_cfg
corpus = load_corpus()["validation"].shuffle(seed=0)
last = cfg.sparse_layers[-1]

# %% One pass: exact effects of every expert of the last layer (edited forwards resume from that layer)
# and the first-order estimate of every expert (one backward per batch), on the same 2,000 tokens.
results = collect(
    model,
    corpus,
    {
        "exact": ExpertEffects(layers=[last], kinds=("remove", "zero")),
        "estimate": FirstOrderEffects(cfg.sparse_layers, cfg.num_experts),
    },
    max_tokens=2_000,
)
exact = results["exact"].to_frame(by_domain=False)
zero = exact[exact["kind"] == "zero"].set_index("expert")["mean_loss_change"]
estimate = results["estimate"].per_corpus_token()[cfg.sparse_layers.index(last)]
print(exact.pivot(index="expert", columns="kind", values="mean_loss_change").sort_values("remove").tail(4))
rho = scipy.stats.spearmanr(zero.sort_index().to_numpy(), estimate.numpy()).statistic
print(
    f"layer {last}: Spearman(first-order estimate, exact zeroing effect) = {rho:.2f} over {cfg.num_experts} experts"
)

# %% Interventions compose with run_with_hooks: scale the strongest expert's weight, or switch it on.
strongest = int(zero.idxmax())
tokens = model.to_tokens("def add(a, b):\n    return a + b\n")
with torch.no_grad():
    clean = model(tokens, return_type="loss").item()
    for name, hooks in {
        "weight x 1.0 (a no-op)": scale_expert_weights(model, last, [strongest], 1.0),
        "weight x 0.5": scale_expert_weights(model, last, [strongest], 0.5),
        "switched on for every token": activate_experts(model, last, [strongest]),
    }.items():
        edited = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks).item()
        print(f"layer {last} expert {strongest}, {name}: loss {clean:.4f} -> {edited:.4f}")
