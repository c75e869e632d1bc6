"""Causal checks of labels on held-out documents (the ``causal`` split, never used to label or score).

For each expert with a concept label (offline dissection), on windows of ``causal``-split documents:

- **described** positions are those whose input token the label describes (the concept's own labeler;
  for a concept ∧ domain label, only in documents of that domain); **control** positions are the rest;
- the loss of the next-token prediction is computed unchanged and under two interventions on the
  expert (:mod:`tl_moe.models.interventions`, applied with ``run_with_hooks``): **remove** (it cannot
  be selected; tokens re-route) and **boost** (its mixing weight × ``boost``);
- the **effect** of an intervention is ``mean |Δloss|`` on described positions minus on control
  positions (does it change the loss more where the label says the expert works?);
- the **control expert** is the expert of the same layer whose routing frequency (``explain`` split)
  is closest; the same intervention on it, read on the same positions, gives the control effect.

Reported per expert and summarized over experts: mean effect with a bootstrap interval and a
sign-flip permutation p-value (effect > 0), and matched − control with the same.

The paper's check is reported beside it, labelled as such: at described positions where the expert
is routed, its rank by exact direct logit attribution on the actual next token among the routed
experts (rank-1 rate), vs the control expert's rank-1 rate at the described positions where it is
routed (chance with top-k routing: 1 / k).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_moe.analysis.logit_lens import expert_logit_lens
from tl_moe.analysis.readout import LogitReadout
from tl_moe.data.concepts import TokenConceptLabeler
from tl_moe.explain.examples import SPLITS, ExpertExamples, document_split
from tl_moe.explain.explainers import Explanation
from tl_moe.explain.runner import bootstrap_mean
from tl_moe.models.hook_names import get_act_name
from tl_moe.models.interventions import remove_experts, scale_expert_weights

__all__ = ["CausalResult", "causal_checks", "causal_windows"]


@dataclass(frozen=True)
class CausalResult:
    """Per-expert causal effects (``frame``) and their summary over experts (``summary``)."""

    frame: pd.DataFrame
    summary: pd.DataFrame
    n_windows: int


def causal_windows(
    dataset: Any,
    tokenizer: Any,
    examples: ExpertExamples,
    *,
    seq_len: int = 128,
    max_windows: int = 32,
    per_document: int = 2,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Full windows ``[BOS, tokens...]`` of ``causal``-split documents (at most ``per_document`` each, so
    many documents and domains are seen), their concept labels ``[window, pos, concept]`` and domains."""
    labeler = TokenConceptLabeler(examples.concept_names)
    causal = SPLITS.index("causal")
    rows = torch.arange(len(dataset))
    split = document_split(rows, examples.split_fractions, examples.seed)
    bos = tokenizer.bos_token_id
    lead = int(bos is not None)
    chunk = seq_len - lead
    ids, labels, domains = [], [], []
    for row in rows[split == causal].tolist():
        document = dataset[row]
        encoding = tokenizer(document["text"], add_special_tokens=False, return_offsets_mapping=True)
        domain = document.get("domain")
        doc_labels = labeler(
            document["text"], encoding["offset_mapping"], domain=domain, language=document.get("language")
        )
        tokens = torch.tensor(encoding["input_ids"])
        for start in list(range(0, len(tokens) - chunk + 1, chunk))[:per_document]:
            window = tokens[start : start + chunk]
            window_labels = doc_labels[start : start + chunk]
            if lead:
                window = torch.cat([torch.tensor([bos]), window])
                window_labels = torch.cat(
                    [torch.zeros(1, window_labels.shape[1], dtype=torch.bool), window_labels]
                )
            ids.append(window)
            labels.append(window_labels)
            domains.append(domain)
            if len(ids) >= max_windows:
                return torch.stack(ids), torch.stack(labels), domains
    if not ids:
        raise ValueError(f"the causal split holds no document of at least {chunk} tokens.")
    return torch.stack(ids), torch.stack(labels), domains


def _token_loss(model: Any, ids: torch.Tensor, hooks: list, batch: int = 8) -> torch.Tensor:
    losses = []
    for part in ids.split(batch):
        logits = model.run_with_hooks(part, fwd_hooks=hooks) if hooks else model(part)
        losses.append(
            torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), part[:, 1:].to(logits.device), reduction="none"
            ).cpu()
        )
    return torch.cat(losses)  # [window, pos - 1]: loss of predicting pos + 1 from pos


def _keeper(cache: dict[str, torch.Tensor], name: str):
    """A hook storing its tensor in ``cache`` under the name it was asked by (aliases resolve)."""

    def keep(tensor, hook):
        cache[name] = tensor.detach()
        return tensor

    return keep


def _baseline_dla(model: Any, ids: torch.Tensor, layers: Sequence[int], batch: int = 8) -> dict[int, tuple]:
    """Per layer: routed experts ``[window, pos, k]`` and each slot's exact DLA on the next token."""
    readout = LogitReadout.from_model(model)
    final = f"blocks.{model.moe_cfg.n_layers - 1}.hook_resid_post"
    names = [
        get_act_name(kind, layer)
        for layer in layers
        for kind in ("expert_out", "topk_weights", "topk_indices")
    ]
    out: dict[int, list] = {layer: [] for layer in layers}
    for part in ids.split(batch):
        cache: dict[str, torch.Tensor] = {}
        model.run_with_hooks(part, fwd_hooks=[(name, _keeper(cache, name)) for name in [*names, final]])
        b, p = part.shape
        inverse_rms = readout.inverse_rms(cache[final])
        next_ids = part.roll(-1, dims=1).to(inverse_rms.device)
        for layer in layers:
            expert_out = cache[get_act_name("expert_out", layer)].reshape(
                b, p, model.moe_cfg.experts_per_token, -1
            )
            weights = cache[get_act_name("topk_weights", layer)].reshape(b, p, -1)
            experts = cache[get_act_name("topk_indices", layer)].reshape(b, p, -1).long()
            dla = expert_logit_lens(readout, expert_out, weights, inverse_rms, next_ids).dla[..., 0]
            out[layer].append((experts.cpu(), dla.float().cpu()))
    return {layer: tuple(torch.cat(parts) for parts in zip(*out[layer], strict=True)) for layer in layers}


def _sign_flip_p(values: np.ndarray, seed: int = 0) -> float:
    """One-sided sign-flip permutation p-value of mean > 0."""
    values = values[np.isfinite(values)]
    if len(values) < 2 or np.all(values == 0):
        return float("nan")
    from scipy.stats import permutation_test

    test = permutation_test(
        (values,),
        np.mean,
        permutation_type="samples",
        alternative="greater",
        n_resamples=9999,
        random_state=seed,
    )
    return float(test.pvalue)


def causal_checks(
    model: Any,
    dataset: Any,
    examples: ExpertExamples,
    explanations: Sequence[Explanation],
    *,
    seq_len: int = 128,
    max_windows: int = 32,
    boost: float = 2.0,
    min_described: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> CausalResult:
    """The causal checks of every concept label in ``explanations`` (see the module docstring)."""
    from tqdm.auto import tqdm

    ids, labels, domains = causal_windows(
        dataset, model.tokenizer, examples, seq_len=seq_len, max_windows=max_windows
    )
    device = next(model.parameters()).device
    ids = ids.to(device)
    concept_index = {name: i for i, name in enumerate(examples.concept_names)}
    labeled = [e for e in explanations if e.ok and e.concept in concept_index]
    layers = sorted({e.layer for e in labeled})
    k = model.moe_cfg.experts_per_token
    frequency = examples.routed_total[SPLITS.index("explain")].sum(-1)  # [L, E]

    def control_of(layer: int, expert: int) -> int:
        row = examples.layer_row(layer)
        gaps = (frequency[row] - frequency[row, expert]).abs()
        gaps[expert] = float("inf")
        return int(gaps.argmin())

    with torch.no_grad():
        base = _token_loss(model, ids, [])
        dla = _baseline_dla(model, ids, layers)
        needed = sorted({(e.layer, x) for e in labeled for x in (e.expert, control_of(e.layer, e.expert))})
        deltas: dict[tuple[int, int, str], torch.Tensor] = {}
        for layer, expert in tqdm(needed, desc="causal", unit="expert", disable=not progress):
            for name, hooks in (
                ("remove", remove_experts(model, layer, [expert])),
                ("boost", scale_expert_weights(model, layer, [expert], boost)),
            ):
                deltas[(layer, expert, name)] = (_token_loss(model, ids, hooks) - base).abs()
    domain_of = np.array(domains, dtype=object)
    rows = []
    for e in labeled:
        described = labels[:, :-1, concept_index[e.concept]].clone()  # input token at pos, loss of pos + 1
        if e.domain is not None:
            described &= torch.from_numpy(domain_of == e.domain)[:, None]
        described[:, 0] = False  # BOS
        control = ~described
        control[:, 0] = False
        control_expert = control_of(e.layer, e.expert)
        row: dict[str, Any] = {"layer": e.layer, "expert": e.expert, "label": e.label, "control_expert": control_expert,
                               "n_described": int(described.sum()), "n_control": int(control.sum())}  # fmt: skip
        if row["n_described"] < min_described:
            row["status"] = f"too few described tokens ({row['n_described']})"
            rows.append(row)
            continue
        row["status"] = "ok"
        for name in ("remove", "boost"):
            for who, x in (("", e.expert), ("control_", control_expert)):
                d = deltas[(e.layer, x, name)]
                row[f"{who}{name}_described"] = float(d[described].mean())
                row[f"{who}{name}_other"] = float(d[control].mean())
                row[f"{who}{name}_effect"] = row[f"{who}{name}_described"] - row[f"{who}{name}_other"]
            row[f"{name}_matched_minus_control"] = row[f"{name}_effect"] - row[f"control_{name}_effect"]
        experts, slot_dla = dla[e.layer]
        experts, slot_dla = experts[:, :-1], slot_dla[:, :-1]
        rank_one = slot_dla.argmax(-1, keepdim=True)  # [w, p, 1]: the slot with the highest DLA
        for who, x in (("", e.expert), ("control_", control_expert)):
            routed = (experts == x) & described[..., None]
            top = (rank_one == torch.arange(k)[None, None, :]) & routed
            n = int(routed.sum())
            row[f"{who}dla_rank1_rate"] = float(top.sum()) / n if n else float("nan")
            row[f"{who}dla_n"] = n
        rows.append(row)
    frame = pd.DataFrame(rows)
    summary = []
    ok = frame[frame["status"] == "ok"] if len(frame) else frame
    for column in ("remove_effect", "boost_effect", "remove_matched_minus_control", "boost_matched_minus_control",
                   "dla_rank1_rate", "control_dla_rank1_rate"):  # fmt: skip
        if column not in ok:
            continue
        values = ok[column].to_numpy(float)
        mean, low, high = bootstrap_mean(values, seed=seed)
        p = _sign_flip_p(values, seed) if "rank1" not in column else float("nan")
        summary.append({"quantity": column, "experts": int(np.isfinite(values).sum()), "mean": mean,
                        "ci low": low, "ci high": high, "p (sign-flip, > 0)": p})  # fmt: skip
    if "dla_rank1_rate" in ok:
        diff = (ok["dla_rank1_rate"] - ok["control_dla_rank1_rate"]).to_numpy(float)
        mean, low, high = bootstrap_mean(diff, seed=seed)
        summary.append({"quantity": "dla_rank1_rate matched - control", "experts": int(np.isfinite(diff).sum()),
                        "mean": mean, "ci low": low, "ci high": high, "p (sign-flip, > 0)": _sign_flip_p(diff, seed)})  # fmt: skip
        summary.append({"quantity": "dla_rank1 chance (1/k)", "experts": 0, "mean": 1 / k, "ci low": np.nan,
                        "ci high": np.nan, "p (sign-flip, > 0)": np.nan})  # fmt: skip
    return CausalResult(frame, pd.DataFrame(summary), int(ids.shape[0]))
