# %% [markdown]
# # Hook points inside every expert, and interventions on them
#
# Runs offline on the shipped toy MoE (16 experts, top-2, OLMoE architecture). Every step works
# the same on a real model: `tl_moe.load("allenai/OLMoE-1B-7B-0924")` or a local directory.

# %%
import torch

import tl_moe
from tl_moe.interventions import remove_experts, scale_expert_weights, zero_expert_outputs

model = tl_moe.load("toy/moe-16x2", device="cpu")  # a TransformerBridge with tl_moe hook points
cfg = model.moe_cfg
print(cfg.architecture, f"{cfg.num_experts} experts, top-{cfg.experts_per_token}, d_expert {cfg.d_expert}")

# %% Cache the router and the experts of one layer.
text = "def mean(values):\n    return sum(values) / len(values)\n"
tokens = model.to_tokens(text)
layer = 2
names = [
    tl_moe.get_act_name(kind, layer) for kind in ("topk_indices", "topk_weights", "expert_post", "expert_out")
]
logits, cache = model.run_with_cache(tokens, names_filter=names)
indices, weights, neurons, outputs = (cache[name] for name in names)
print("routed experts of the first tokens:", indices[0, :6].tolist())
print("expert neuron activations:", tuple(neurons.shape), "= [batch, pos, k, d_expert]")

# %% The block output is the routing-weighted sum of the experts' outputs.
_, block = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.mlp.hook_out")
recomposed = (weights.unsqueeze(-1) * outputs).sum(dim=2)
print(
    "max |recomposed - block output|:",
    (recomposed - block[f"blocks.{layer}.mlp.hook_out"]).abs().max().item(),
)

# %% Interventions are lists of (hook name, hook function): they compose and work with run_with_hooks.
most_used = int(torch.bincount(indices.flatten(), minlength=cfg.num_experts).argmax())
loss = model(tokens, return_type="loss").item()
for label, hooks in {
    f"remove expert {most_used} (tokens re-route)": remove_experts(model, layer, [most_used]),
    f"zero expert {most_used}'s output (no re-routing)": zero_expert_outputs(model, layer, [most_used]),
    f"double expert {most_used}'s mixing weight": scale_expert_weights(model, layer, [most_used], 2.0),
}.items():
    changed = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=hooks).item()
    print(f"{label:55s} loss {loss:.3f} -> {changed:.3f}")
