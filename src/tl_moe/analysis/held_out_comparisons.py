"""The held-out protocol's comparisons: which arm is compared with which, how each arm is drawn, and
every comparison's records (pooled over concepts, or per concept group) as one table.

An *arm* is one family of probed units (:class:`~tl_moe.analysis.held_out_probing.HeldOutArm`); a
comparison is a paired difference of two arms' mean scores over the concepts both probed, with a
document-level bootstrap interval (:func:`~tl_moe.analysis.held_out_probing.compare`).
:class:`~tl_moe.analysis.held_out_study.HeldOutProbing` computes the arms and calls
:func:`held_out_comparisons` / :func:`group_comparisons` on them.
"""

from __future__ import annotations

import pandas as pd

from tl_moe.analysis.held_out_probing import HeldOutArm, compare, is_document_concept
from tl_moe.data.concepts import KNOWN_CONCEPTS

__all__ = [
    "ARM_DRAWS",
    "COMPARISONS",
    "DETERMINISTIC",
    "LEAD_GROUP",
    "NULL_CORRECTED",
    "ONE_RANDOM_DRAW",
    "RANDOM_DRAWS",
    "ROUTED_COUNT",
    "ROUTED_COUNT_PERMUTED",
    "arm_draws",
    "comparison_draws",
    "comparison_frame",
    "concept_group",
    "group_comparisons",
    "group_frame",
    "held_out_comparisons",
]

#: The matched-count routed-token control (d_expert random dense neurons per draw) and its permuted null.
ROUTED_COUNT = "dense_on_routed_tokens_matched_count"
ROUTED_COUNT_PERMUTED = "dense_on_routed_tokens_matched_count_permuted_labels"

#: Held-out comparisons: name -> (arm, arm it is compared with); estimate = mean F1(first) - mean F1(second).
#: An arm probed in seeded draws is stored as ``name[0]``, ``name[1]``, ... and compared as one control
#: (per concept, the mean over its draws; :func:`~tl_moe.analysis.held_out_probing.compare`).
COMPARISONS = {
    "moe_vs_dense": ("moe", "dense"),
    "moe_vs_dense_on_routed_tokens": ("moe", "dense_on_routed_tokens"),
    "moe_vs_dense_on_routed_tokens_matched_count": ("moe", ROUTED_COUNT),
    "moe_vs_matched_subsets": ("moe", "dense_matched_subsets"),
    "moe_vs_untrained": ("moe", "untrained_moe"),
    "permuted_labels": ("moe_permuted_labels", "dense_permuted_labels"),
    "permuted_labels_on_routed_tokens": ("moe_permuted_labels", ROUTED_COUNT_PERMUTED),
}
#: Differences tested against their own null: name -> ((arm, control), (arm, control) with permuted labels);
#: estimate = (mean score(arm) - mean score(control)) - (the same with labels permuted), one document
#: bootstrap of the whole (:func:`~tl_moe.analysis.held_out_probing.compare` with ``null``).
NULL_CORRECTED = {
    "matched_count_minus_its_null": (("moe", ROUTED_COUNT), ("moe_permuted_labels", ROUTED_COUNT_PERMUTED)),
}
#: How a held-out arm is drawn. DETERMINISTIC: the same units and tokens for every seed (the MoE's experts,
#: the dense layers, all dense neurons on each expert's routed tokens). ONE_RANDOM_DRAW: one seeded random
#: draw that every test of it holds fixed, so the test is conditional on that draw (the routing-matched
#: token subsets, the untrained initialization, a permutation of the labels). RANDOM_DRAWS: the mean of
#: several seeded draws (``d_expert`` random dense neurons); it has one draw only when that draw is every
#: neuron of the dense layer (``d_expert`` >= ``d_mlp``), which is then deterministic.
DETERMINISTIC, ONE_RANDOM_DRAW, RANDOM_DRAWS = "deterministic", "one random draw", "random draws"
ARM_DRAWS = {
    "moe": DETERMINISTIC,
    "dense": DETERMINISTIC,
    "dense_on_routed_tokens": DETERMINISTIC,
    ROUTED_COUNT: RANDOM_DRAWS,
    "dense_matched_subsets": ONE_RANDOM_DRAW,
    "untrained_moe": ONE_RANDOM_DRAW,
    "moe_permuted_labels": ONE_RANDOM_DRAW,
    "dense_permuted_labels": ONE_RANDOM_DRAW,
    ROUTED_COUNT_PERMUTED: RANDOM_DRAWS,
}


def comparison_draws(comparison: str, n_draws: int | None = None) -> str:
    """How a held-out comparison's arms are drawn (:data:`ARM_DRAWS`): ONE_RANDOM_DRAW if any arm is one
    random draw held fixed (a RANDOM_DRAWS arm with several draws is not: its draws' variation is tested),
    else RANDOM_DRAWS if an arm averages several draws (``n_draws`` > 1), else DETERMINISTIC.

    Raises:
        KeyError: ``comparison`` is not one of :data:`COMPARISONS` or :data:`NULL_CORRECTED`.
    """
    if comparison in COMPARISONS:
        arms = COMPARISONS[comparison]
    elif comparison in NULL_CORRECTED:
        arms = tuple(arm for pair in NULL_CORRECTED[comparison] for arm in pair)
    else:
        raise KeyError(
            f"unknown held-out comparison {comparison!r}; known: {sorted({*COMPARISONS, *NULL_CORRECTED})}"
        )
    kinds = {ARM_DRAWS[arm] for arm in arms}
    several = (n_draws or 1) > 1
    if ONE_RANDOM_DRAW in kinds:
        return ONE_RANDOM_DRAW
    if RANDOM_DRAWS in kinds and several:
        return RANDOM_DRAWS
    return DETERMINISTIC  # a RANDOM_DRAWS arm with one draw holds every neuron


#: The concept group the held-out findings lead with (every token-level group is reported on its own).
LEAD_GROUP = "text"


def held_out_comparisons(
    arms: dict[str, HeldOutArm],
    *,
    n_resamples: int,
    seed: int,
    min_clusters: int,
    permutations: int = 0,
    concepts: set[str] | None = None,
    ks: tuple[int, ...] | None = None,
    what: str = "",
) -> list[dict]:
    """Every comparison of :data:`COMPARISONS` and :data:`NULL_CORRECTED` whose arms were computed: the
    records of :func:`~tl_moe.analysis.held_out_probing.compare` with ``comparison``, ``first``, ``second``.
    ``permutations`` > 0 adds each plain comparison's document swap test (``swap_p``)."""
    options = dict(n_resamples=n_resamples, seed=seed, min_clusters=min_clusters, concepts=concepts, ks=ks)
    records = []
    for name, (first, second) in COMPARISONS.items():
        controls = arm_draws(arms, second)
        if first not in arms or not controls:
            continue
        records += _named_records(
            name, first, second, arms[first], controls, what, permutations=permutations, **options
        )
    for name, ((first, second), (null_first, null_second)) in NULL_CORRECTED.items():
        controls, null_controls = arm_draws(arms, second), arm_draws(arms, null_second)
        if first not in arms or null_first not in arms or not controls or not null_controls:
            continue
        null = (arms[null_first], null_controls)
        records += _named_records(name, first, second, arms[first], controls, what, null=null, **options)
    return records


def _named_records(
    name: str, first: str, second: str, a: HeldOutArm, controls: list[HeldOutArm], what: str, **options
) -> list[dict]:
    """:func:`~tl_moe.analysis.held_out_probing.compare`'s records of ``a`` against ``controls`` (keyword
    ``options`` passed on), each with ``comparison`` = ``name`` and the two arms' names."""
    return [
        {"comparison": name, **record, "first": first, "second": second}
        for record in compare(a, controls, what=f"{name}{what}", **options)
    ]


def arm_draws(arms: dict[str, HeldOutArm], name: str) -> list[HeldOutArm]:
    """The arm ``name``, or its seeded draws ``name[0]``, ``name[1]``, ... (empty: not computed)."""
    if name in arms:
        return [arms[name]]
    return [arm for key, arm in arms.items() if key.startswith(name + "[")]


def concept_group(name: str) -> str:
    """The concept library's group of a concept (``code``, ``text``, ``pos``, ...; ``other`` if unknown)."""
    concept = KNOWN_CONCEPTS.get(name)
    return concept.group if concept is not None else "other"


def group_comparisons(
    arms: dict[str, HeldOutArm], *, n_resamples: int, seed: int, min_clusters: int, k: int = 1
) -> list[dict]:
    """Every held-out comparison at ``k`` restricted to each concept group (the concept library's groups).

    One record per (comparison, group, metric), as :func:`compare`'s plus ``group``, :data:`LEAD_GROUP`
    first. Each concept passes :func:`compare`'s per-concept gate (positives and negatives in at least
    ``min_clusters`` test documents in every arm) or is listed in ``dropped_concepts`` with the reason; a
    group none of whose concepts passes has no estimate (the reason says so).
    """
    if "moe" not in arms:
        return []
    groups: dict[str, list[str]] = {}
    for name in arms["moe"].concepts:
        if not is_document_concept(name):
            groups.setdefault(concept_group(name), []).append(name)
    if k not in arms["moe"].ks:
        return []
    records = []
    for group in sorted(groups, key=lambda g: (g != LEAD_GROUP, g)):
        for record in held_out_comparisons(
            arms,
            n_resamples=n_resamples,
            seed=seed,
            min_clusters=min_clusters,
            concepts=set(groups[group]),
            ks=(k,),
            what=f", {group} concepts",
        ):
            records.append({"protocol": "held_out", "group": group, **record})
    return records


def group_frame(records: list[dict]) -> pd.DataFrame:
    """The per-group records as a table: the comparison columns with ``group`` after ``comparison``."""
    if not records:
        return pd.DataFrame()
    frame = comparison_frame(records)
    frame.insert(2, "group", [r["group"] for r in records])
    return frame


def comparison_frame(records: list[dict]) -> pd.DataFrame:
    """Comparison records (held-out or paper protocol) as one table with a fixed set of columns (docs/REPORT.md,
    ``sections.probing.comparisons``); a column no record has is None, counts stay integers."""
    columns = [
        "protocol",
        "comparison",
        "k",
        "metric",
        "estimate",
        "ci_low",
        "ci_high",
        "n_concepts",
        "n_concepts_moe_higher",
        "n_concepts_selected",
        "n_concepts_dropped",
        "dropped_concepts",
        "n_documents",
        "n_documents_with_positives",
        "n_draws",
        "draws_df",
        "a_mean",
        "b_mean",
        "first",
        "second",
        "interval_over",
        "confidence",
        "interval_method",
        "interval_available",
        "interval_unavailable_reason",
        "bootstrap_bias",
        "bootstrap_p",
        "bootstrap_resamples",
        "swap_p",
        "swap_permutations",
        "uncorrected_estimate",
        "uncorrected_ci_low",
        "uncorrected_ci_high",
        "null_estimate",
        "null_ci_low",
        "null_ci_high",
    ]
    frame = pd.DataFrame.from_records(records)
    for column in columns:
        if column not in frame:
            frame[column] = None
    for column in _COUNT_COLUMNS:  # counts stay integers where some records lack them (None, not NaN)
        frame[column] = _integers(frame[column])
    return frame[columns]


def _integers(column: pd.Series) -> pd.Series:
    """``column`` as Python ints, None where missing (an object column: pandas would turn ints beside
    missing values back into floats)."""
    values = [None if pd.isna(v) else int(v) for v in column]
    return pd.Series(values, index=column.index, dtype=object)


_COUNT_COLUMNS = (
    "n_concepts_moe_higher",
    "n_concepts_selected",
    "n_concepts_dropped",
    "n_documents_with_positives",
    "n_draws",
    "swap_permutations",
    "bootstrap_resamples",
)
