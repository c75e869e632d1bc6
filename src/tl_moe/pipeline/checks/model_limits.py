"""Options bounded by the model's shape: layers, probe sizes, vocabulary clusters, driver experts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tl_moe.errors import InputError
from tl_moe.pipeline.checks.errors import BudgetError, LayersError, ProbeSizeError

__all__ = [
    "check_layers",
    "check_n_drivers",
    "check_n_token_groups",
    "check_probe_ks",
    "check_removable_experts",
]


def check_layers(
    layers: Sequence[Any] | None, allowed: Sequence[int], *, input_name: str = "--probe-layers"
) -> tuple[int, ...]:
    """``layers`` sorted and deduplicated if each is one of ``allowed`` (e.g. ``moe_cfg.sparse_layers``).

    ``None`` means all of ``allowed``.

    Raises:
        LayersError: a layer that is not an integer, or not in ``allowed``.
    """
    allowed = tuple(int(layer) for layer in allowed)
    if layers is None:
        return allowed
    bad_type = [layer for layer in layers if isinstance(layer, bool) or not isinstance(layer, int)]
    if bad_type:
        raise LayersError(
            f"{input_name} {bad_type} are not layer numbers; accepted: integers among {list(allowed)}.",
            input_name=input_name,
        )
    wrong = sorted({layer for layer in layers if layer not in allowed})
    if wrong:
        raise LayersError(
            f"{input_name} {wrong} are not among the model's layers {list(allowed)}.", input_name=input_name
        )
    if not layers:
        raise LayersError(
            f"{input_name} is empty; accepted: one or more of {list(allowed)}.", input_name=input_name
        )
    return tuple(sorted(set(layers)))


def check_n_token_groups(
    n_groups: int, vocabulary: int, model: str = "the model", *, input_name: str = "--n-token-groups"
) -> int:
    """``n_groups`` if the vocabulary clustering can make that many clusters of the ``vocabulary``
    rows of the model's unembedding (one token per cluster at most); else a :class:`BudgetError`."""
    if n_groups > vocabulary:
        raise BudgetError(
            f"{input_name} {n_groups} is more clusters than the {vocabulary} tokens of {model}'s vocabulary "
            f"(the clusters partition its unembedding rows); accepted: 1 to {vocabulary}.",
            input_name=input_name,
        )
    return n_groups


def check_probe_ks(
    ks: Sequence[int], n_neurons: int, *, unit: str = "expert", input_name: str = "--probe-ks"
) -> tuple[int, ...]:
    """``ks`` if every k is at most ``n_neurons``, the neurons of the smallest probed unit.

    A k-sparse probe over more neurons than a unit has cannot be fitted: its rows would be
    empty estimates, so such a k is refused before the pass.

    Raises:
        ProbeSizeError: a k above ``n_neurons``.
    """
    too_large = sorted({int(k) for k in ks if int(k) > n_neurons})
    if too_large:
        raise ProbeSizeError(
            f"{input_name} {too_large} exceed the {n_neurons} neurons of each {unit}; accepted: "
            f"integers from 1 to {n_neurons}.",
            input_name=input_name,
        )
    return tuple(ks)


def check_n_drivers(
    n_drivers: int, n_layers: int, n_experts: int, *, input_name: str = "--n-drivers"
) -> None:
    """Refuse more driver experts than half the experts of the sparse layers: each needs a distinct
    control expert (:func:`~tl_moe.analysis.drivers.max_drivers`)."""
    from tl_moe.analysis.drivers import max_drivers

    most = max_drivers(n_layers, n_experts)
    if n_drivers > most:
        raise BudgetError(
            f"{input_name} {n_drivers} is more than half of the model's {n_layers * n_experts} experts "
            f"({n_layers} sparse layers × {n_experts}): each driver needs a distinct control; accepted: 1 to {most}.",
            input_name=input_name,
        )


def check_removable_experts(model_name: str, n_experts: int, experts_per_token: int) -> None:
    """Refuse the drivers (and associations and re-weighting, built on them) on a model whose tokens
    use every expert: removing one expert from a token's routing needs ``k < n_experts``."""
    if experts_per_token >= n_experts:
        raise InputError(
            f"drivers, associations and reweighting remove an expert from each token's routing, which needs "
            f"fewer experts per token than experts; {model_name} routes each token to {experts_per_token} of "
            f"its {n_experts} experts. Accepted: a model with num_experts_per_tok < num_experts, or --analyses "
            "without drivers, associations and reweighting.",
            input_name="--analyses",
        )
