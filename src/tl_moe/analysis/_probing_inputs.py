"""Checks of the stored tokens the probing protocols read (:class:`~tl_moe.analysis.held_out_study.HeldOutProbing`,
:class:`~tl_moe.analysis.paper_study.PaperProtocol`): each raises a one-line
:class:`~tl_moe.errors.InputError` naming the input and what is accepted, before any probe is fitted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tl_moe.analysis.activations import StoredTokens
from tl_moe.errors import InputError
from tl_moe.models.config import MoEConfig
from tl_moe.models.hook_names import get_act_name

__all__ = [
    "check_dense_rows",
    "check_expert_rows",
    "check_labelled",
    "check_probe_sizes",
    "check_same_tokens",
    "check_sparse_layers",
    "dropped_rows",
    "same_tokens",
]


def check_sparse_layers(moe_cfg: MoEConfig, layers: Sequence[int]) -> None:
    """``layers`` must be a non-empty choice among ``moe_cfg.sparse_layers`` (the blocks with experts)."""
    sparse = tuple(moe_cfg.sparse_layers)
    if not sparse:
        raise InputError("the model has no sparse (expert) layers: expert probing needs an MoE's config.")
    if not layers:
        raise InputError(f"layers is empty; choose among the sparse layers {sparse}.")
    outside = [layer for layer in layers if layer not in sparse]
    if outside:
        raise InputError(f"layers {outside} are not sparse (expert) layers; choose among {sparse}.")


def check_labelled(stored: StoredTokens, name: str, documents: bool = True) -> None:
    """``stored`` (called ``name``) must carry concept labels and, if ``documents``, document ids."""
    if stored.labels is None or stored.concept_names is None:
        raise InputError(
            f"the {name} stored tokens have no concept labels; collect them with a concept_labeler."
        )
    if documents and stored.doc_index is None:
        raise InputError(
            f"the {name} stored tokens have no document ids (doc_index); the held-out protocol splits and "
            "bootstraps by document: collect them again with a current TokenActivationStore."
        )


def check_expert_rows(
    stored: StoredTokens, name: str, layers: Sequence[int], num_experts: int, d_expert: int | None = None
) -> None:
    """``stored`` (called ``name``) must hold each layer's ``expert_post`` ``[token, slot, d_expert]`` and
    ``topk_indices`` ``[token, slot]``, with expert indices in ``0 .. num_experts - 1`` that, over all the
    layers, reach the upper half of them (a larger ``num_experts`` would invent experts that were never
    there; one layer's router may still leave its upper experts unused, as a collapsed router of a small
    model does); ``d_expert`` (if given) must be the stored neurons per expert."""
    highest = None  # the largest expert index over the layers, and the key it was seen in
    for layer in layers:
        post_key, index_key = get_act_name("expert_post", layer), get_act_name("topk_indices", layer)
        missing = [key for key in (post_key, index_key) if key not in stored.rows]
        if missing:
            raise InputError(
                f"the {name} stored tokens hold no {', '.join(missing)} (layer {layer}); they hold "
                f"{sorted(stored.rows)}: collect them with the study's expert_store() for layers {tuple(layers)}."
            )
        post, indices = stored.rows[post_key], stored.rows[index_key]
        if post.ndim != 3 or indices.shape != post.shape[:2]:
            raise InputError(
                f"the {name} stored {post_key} {tuple(post.shape)} and {index_key} {tuple(indices.shape)} are not "
                "[token, slot, d_expert] and [token, slot]."
            )
        if d_expert is not None and post.shape[-1] != d_expert:
            raise InputError(
                f"d_expert={d_expert} contradicts the {name} stored {post_key}, which has {post.shape[-1]} "
                "neurons per expert; pass the model's d_expert."
            )
        _check_expert_indices(indices, name, index_key, num_experts)
        if indices.numel() and (highest is None or int(indices.max()) > highest[0]):
            highest = int(indices.max()), index_key
    if highest is not None and 2 * (highest[0] + 1) <= num_experts:
        raise InputError(
            f"num_experts={num_experts} contradicts the {name} stored expert indices, which run up to "
            f"{highest[0]} in every layer ({highest[1]} at most; a model with {highest[0] + 1} experts); pass the "
            "model's num_experts."
        )


def _check_expert_indices(indices: torch.Tensor, name: str, key: str, num_experts: int) -> None:
    """The stored expert indices must lie in ``0 .. num_experts - 1``. (Routing may leave the upper
    experts of a layer unused, as a collapsed router of a small model does: that is not a contradiction.)"""
    if not indices.numel():
        return
    if indices.min() < 0 or int(indices.max()) >= num_experts:
        raise InputError(
            f"num_experts={num_experts} contradicts the {name} stored {key}, whose expert indices run "
            f"from {int(indices.min())} to {int(indices.max())} (a model with {int(indices.max()) + 1} experts at "
            "least); pass the model's num_experts and its own stored tokens."
        )


def check_dense_rows(stored: StoredTokens, name: str, layers: Sequence[int]) -> None:
    """``stored`` (called ``name``) must hold the FFN neurons of each dense layer in ``layers``."""
    missing = [
        get_act_name("neuron", layer) for layer in layers if get_act_name("neuron", layer) not in stored.rows
    ]
    if missing:
        raise InputError(
            f"the {name} stored tokens hold no {', '.join(missing)}; they hold {sorted(stored.rows)}: collect "
            "them with the study's dense_store() for its dense_layers."
        )


def check_probe_sizes(ks: Sequence[int], units: int, what: str) -> None:
    """Every probe size in ``ks`` must be at most ``units`` (the neurons of the smallest probed unit)."""
    large = [k for k in ks if k > units]
    if large:
        raise InputError(
            f"probe sizes ks {large} exceed the {units} neurons of {what}; choose ks of 1..{units}."
        )


def same_tokens(moe: StoredTokens, other: StoredTokens) -> bool:
    """Whether ``other`` was stored on the MoE's very tokens (same count, token ids and documents)."""
    return (
        moe.token_index.shape == other.token_index.shape
        and torch.equal(moe.input_ids, other.input_ids)
        and (moe.doc_index is None or other.doc_index is None or torch.equal(moe.doc_index, other.doc_index))
    )


def dropped_rows(stored: StoredTokens) -> bool:
    """Whether ``stored`` is a bounded probing store that dropped rows (some key had more than N):
    two models' stores then keep different tokens of the same stream, each routed its own way."""
    return bool(getattr(stored, "n_capped", 0))


def check_same_tokens(moe: StoredTokens, other: StoredTokens, name: str) -> None:
    """``other`` (called ``name``) must be stored on the MoE's very tokens (same count, token ids and
    documents): its comparison with the MoE is paired by test document. Bounded stores that dropped
    rows are exempt (:func:`dropped_rows`: each keeps its own sample of the same stream)."""
    if dropped_rows(moe) or dropped_rows(other):
        return
    if not same_tokens(moe, other):
        raise InputError(
            f"the {name} stored tokens ({len(other.token_index)}) are not the MoE's ({len(moe.token_index)}) "
            "tokens; store both on the same corpus, tokenizer and max_tokens (and a probing store neither filled)."
        )
