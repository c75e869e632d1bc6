"""Each MoE of the toy family through the probing section's protocols: the run plumbing of the sparsity
analysis (which models, their stored tokens, the saved steps; the method is
:mod:`tl_moe.analysis.sparsity_family`)."""

from __future__ import annotations

import pandas as pd

from tl_moe.analysis.concept_probing import PAPER_PROTOCOL, probe_experts
from tl_moe.analysis.sparsity_family import FAMILY_COMPARISONS, FamilyMember
from tl_moe.errors import InputError
from tl_moe.models.config import MoEConfig
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.needs import DenseNeurons, ExpertNeurons
from tl_moe.pipeline.protocol import Inputs, Need
from tl_moe.pipeline.sections.probing import (
    ProbingResult,
    _comparison_frame,
    held_out_probing,
    probe_settings,
    probing_steps,
)
from tl_moe.workers import WorkerPool
from tl_moe.zoo.family import TOY_FAMILY

__all__ = ["family_names", "held_out_table", "member_config", "members", "parameters"]


def family_names(run: RunContext) -> list[str]:
    """The toy MoEs of the zoo besides the analyzed model (whose probing result is reused)."""
    return [name for name, cfg in TOY_FAMILY.items() if cfg.is_moe and name != run.main]


def member_config(run: RunContext, name: str) -> MoEConfig:
    """A family member's config: the toy zoo's, or the run's for a model given by the caller."""
    return TOY_FAMILY[name] if name in TOY_FAMILY else run.config(name)


def members(run: RunContext, inputs: Inputs, analysis: str, names: list[str]) -> list[FamilyMember]:
    """The analyzed model and the family's other MoEs ``names`` with their paper-protocol probe results, by
    number of experts: the analyzed model's from probing, each other member's probed here (each layer
    saved as it finishes, keyed by the probe options and that model's pass)."""
    probing: ProbingResult = inputs.result("probing")
    units = {run.main: (run.config(run.main), probing.moe_units)}
    for name in names:
        cfg = member_config(run, name)
        step = run.steps(analysis, {"probe": probe_settings(run), "paper_protocol": PAPER_PROTOCOL}, [name])
        units[name] = (
            cfg,
            probe_experts(
                inputs[Need(name, ExpertNeurons())],
                cfg.sparse_layers,
                cfg.num_experts,
                probe_settings(run),
                min_positives=run.options.config("probing").min_examples,
                progress=run.options.progress,
                step=step,
            ),
        )
    ordered = sorted(units.items(), key=lambda item: item[1][0].num_experts)
    return [FamilyMember(name, cfg.active_ratio, cfg.num_experts, frame) for name, (cfg, frame) in ordered]


def held_out_table(
    run: RunContext, inputs: Inputs, analysis: str, family: list[FamilyMember]
) -> tuple[pd.DataFrame, list[str]]:
    """The held-out records of every member (one row per member, comparison, metric and k) and notes on
    what is missing: the analyzed model's from probing, the others' computed here against the dense twin."""
    if run.dense is None:
        return pd.DataFrame(), ["no dense twin (--dense-baseline none): no held-out comparison."]
    with run.worker_pool() as pool:
        frames, notes = _member_frames(run, inputs, analysis, family, pool)
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), notes


def _member_frames(
    run: RunContext, inputs: Inputs, analysis: str, family: list[FamilyMember], pool: WorkerPool
) -> tuple[list[pd.DataFrame], list[str]]:
    """:func:`held_out_table`'s frame of each member that has records, and its notes."""
    frames, notes = [], []
    for member in family:
        if member.name == run.main:
            records = [
                r
                for r in inputs.result("probing").comparisons.to_dict("records")
                if r["protocol"] == "held_out" and r["comparison"] in FAMILY_COMPARISONS
            ]
        else:
            records, note = _member_records(run, inputs, analysis, member.name, pool)
            notes += [note] if note else []
        frame = _comparison_frame(records) if records else pd.DataFrame()
        if len(frame):
            frame["metric"] = frame["metric"].fillna("f1")  # unavailable records name no metric
            frames.append(
                frame.assign(model=member.name, active_ratio=member.active_ratio, experts=member.experts)
            )
    return frames, notes


def _member_records(
    run: RunContext, inputs: Inputs, analysis: str, name: str, pool: WorkerPool | None = None
) -> tuple[list[dict], str | None]:
    """A member's held-out records of :data:`FAMILY_COMPARISONS` (each arm and block saved as it finishes,
    keyed by this member's and the twin's passes), or, where it has too few documents or examples, records
    that say so with a note: never a number."""
    stored, dense = inputs[Need(name, ExpertNeurons())], inputs[Need(run.dense, DenseNeurons())]
    layers = tuple(member_config(run, name).sparse_layers)
    try:
        _, records, _ = held_out_probing(
            run,
            stored,
            dense,
            None,
            layers,
            step=probing_steps(run, analysis, [name, run.dense]),
            model=name,
            permuted=False,
            pool=pool,
        )
    except InputError as error:
        records = [
            {
                "protocol": "held_out",
                "comparison": comparison,
                "k": k,
                "metric": "f1",
                "n_concepts": 0,
                "interval_available": False,
                "interval_unavailable_reason": str(error),
            }
            for comparison in FAMILY_COMPARISONS
            for k in sorted(set(run.options.config("probing").ks))
        ]
        return records, f"{name}: held-out protocol unavailable: {error}"
    return [r for r in records if r["comparison"] in FAMILY_COMPARISONS], None


def parameters(names: list[str]) -> dict[str, int]:
    """Total parameters of each shipped toy model (its checkpoint's metadata); others are left out."""
    from tl_moe.zoo.registry import metadata

    counts = {}
    for name in names:
        try:
            counts[name] = int(metadata(name)["n_parameters"])
        except (InputError, KeyError, OSError):
            continue
    return counts
