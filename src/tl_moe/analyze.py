"""The main job, ``tl-moe analyze``: one streaming pass per model, then every analysis, then a report.

With no arguments it analyzes the default toy MoE against its dense twin on the embedded corpus.
Each pass checkpoints under ``OUT/checkpoints`` so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

ANALYSES = ("probing", "specialization", "domains", "logit_lens")


@dataclass
class AnalyzeOptions:
    """Settings of one ``tl-moe analyze`` run (the CLI flags)."""

    model: str = "toy/moe-16x2"
    dense_baseline: str | None = "toy/dense"
    corpus: str | None = None
    split: str = "validation"
    out: Path = Path("tl_moe_report")
    max_tokens: int = 60_000
    batch_size: int = 16
    seq_len: int = 128
    device: str | None = None
    analyses: tuple[str, ...] = ANALYSES
    seed: int = 0
    n_token_groups: int = 50
    probe_ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    min_examples: int = 30
    sparsity_family: bool = False
    probe_layers: tuple[int, ...] | None = None
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        unknown = set(self.analyses) - set(ANALYSES)
        if unknown:
            raise ValueError(f"Unknown analyses {sorted(unknown)}; choose from {', '.join(ANALYSES)}.")
        if self.probe_layers is not None and not self.probe_layers:
            raise ValueError("--probe-layers needs at least one layer.")
        if self.max_tokens < 1000:
            raise ValueError(
                f"--max-tokens must be at least 1000 for meaningful statistics, got {self.max_tokens}."
            )


class ConceptLabeler:
    """The concept labeler the collection pass calls once per document (all built-in concepts)."""

    def __init__(self):
        from tl_moe.data.concepts import CONCEPTS

        self.concept_names = tuple(CONCEPTS)

    def __call__(self, text, offsets, domain=None, language=None):
        from tl_moe.data.concepts import label_tokens

        return label_tokens(text, offsets, self.concept_names, domain=domain, language=language)


def _split(options: AnalyzeOptions):
    from tl_moe.data.corpus import load_corpus

    corpus = load_corpus(options.corpus, require_domain=True)
    if options.split not in corpus:
        raise ValueError(f"The corpus has no split {options.split!r}; it has {list(corpus)}.")
    # Shuffled (seeded) so that any --max-tokens budget samples every domain, not the first ones.
    return corpus[options.split].shuffle(seed=options.seed)


def _moe_pass(model, dataset, options: AnalyzeOptions, token_groups, checkpoints: Path) -> dict:
    from tl_moe.analysis.activations import TokenActivationStore
    from tl_moe.analysis.concept_probing import expert_probing_hooks
    from tl_moe.analysis.logit_lens_accumulator import ExpertLogitLensAccumulator
    from tl_moe.analysis.routing_stats import (
        routed_tokens_by_domain,
        routed_tokens_by_group,
        tokens_by_domain,
    )
    from tl_moe.collect import collect, domain_names

    cfg = model.moe_cfg
    n_domains = len(domain_names(dataset))
    accumulators = {
        "routed_by_domain": routed_tokens_by_domain(cfg, n_domains),
        "routed_by_group": routed_tokens_by_group(cfg, token_groups),
        "tokens_by_domain": tokens_by_domain(n_domains),
    }
    if "probing" in options.analyses:
        hooks = expert_probing_hooks(cfg)
        accumulators["store"] = TokenActivationStore(hooks, max_tokens=options.max_tokens)
    if "logit_lens" in options.analyses or "specialization" in options.analyses:
        accumulators["logit_lens"] = ExpertLogitLensAccumulator(
            model, layers=list(cfg.sparse_layers), top_n=3, token_groups=token_groups
        )
    return collect(
        model,
        dataset,
        accumulators,
        batch_size=options.batch_size,
        seq_len=options.seq_len,
        max_tokens=options.max_tokens,
        concept_labeler=ConceptLabeler(),
        checkpoint_dir=checkpoints / "moe",
        checkpoint_every=20,
    )


def probed_layers(cfg, options: AnalyzeOptions) -> tuple[int, ...]:
    """The sparse layers whose experts are probed: ``--probe-layers``, or all of them.

    The probing store keeps ``k x d_expert`` float16 values per token and probed layer; choose
    fewer layers (or fewer ``--max-tokens``) to bound memory on large models.
    """
    if options.probe_layers is None:
        return tuple(cfg.sparse_layers)
    wrong = [layer for layer in options.probe_layers if layer not in cfg.sparse_layers]
    if wrong:
        raise ValueError(
            f"--probe-layers {wrong} are not sparse layers of this model; sparse layers: {list(cfg.sparse_layers)}."
        )
    return tuple(sorted(set(options.probe_layers)))


def _probe_family(options: AnalyzeOptions, dataset, checkpoints: Path, done: dict) -> dict:
    """Probe every MoE of the toy family (the ones not in ``done``); name -> (config, frame)."""
    import tl_moe
    from tl_moe.analysis.activations import TokenActivationStore
    from tl_moe.analysis.concept_probing import expert_probing_hooks, probe_experts
    from tl_moe.collect import collect
    from tl_moe.zoo.family import TOY_FAMILY

    family = dict(done)
    for name, cfg in TOY_FAMILY.items():
        if not cfg.is_moe or name in family:
            continue
        model = tl_moe.load(name, device=options.device)
        hooks = expert_probing_hooks(cfg)
        stored = collect(
            model,
            dataset,
            {"store": TokenActivationStore(hooks, max_tokens=options.max_tokens)},
            batch_size=options.batch_size,
            seq_len=options.seq_len,
            max_tokens=options.max_tokens,
            concept_labeler=ConceptLabeler(),
            checkpoint_dir=checkpoints / name.replace("/", "_"),
            checkpoint_every=20,
        )["store"]
        params = {"ks": options.probe_ks, "min_examples": options.min_examples, "random_state": options.seed}
        frame = probe_experts(
            stored, cfg.sparse_layers, cfg.num_experts, params, min_positives=options.min_examples
        )
        family[name] = (cfg, frame)
    return dict(sorted(family.items(), key=lambda item: item[1][0].num_experts))


def _dense_pass(model, dataset, options: AnalyzeOptions, checkpoints: Path) -> dict:
    from tl_moe.analysis.activations import TokenActivationStore
    from tl_moe.collect import collect
    from tl_moe.models.hook_names import get_act_name

    cfg = model.moe_cfg
    hooks = {f"neuron{layer}": get_act_name("neuron", layer, model) for layer in cfg.dense_layers}
    return collect(
        model,
        dataset,
        {"store": TokenActivationStore(hooks, max_tokens=options.max_tokens)},
        batch_size=options.batch_size,
        seq_len=options.seq_len,
        max_tokens=options.max_tokens,
        concept_labeler=ConceptLabeler(),
        checkpoint_dir=checkpoints / "dense",
        checkpoint_every=20,
    )


def unembedding(model) -> torch.Tensor:
    """The unembedding matrix ``[d_model, d_vocab]`` of a bridge's Hugging Face model."""
    return model.original_model.get_output_embeddings().weight.detach().float().T


def run_analysis(options: AnalyzeOptions) -> Path:
    """Run ``tl-moe analyze``; returns the path of the written ``index.html``."""
    import tl_moe
    from tl_moe.analysis.clustering import cluster_vocabulary
    from tl_moe.report import Report

    options.check()
    started = time.perf_counter()
    out = Path(options.out)
    checkpoints = out / "checkpoints"
    dataset = _split(options)
    model = tl_moe.load(options.model, device=options.device)
    if not model.moe_cfg.is_moe:
        raise ValueError(
            f"{options.model} is a dense model; `tl-moe analyze` needs an MoE (pass the dense one as --dense-baseline)."
        )
    token_groups = cluster_vocabulary(unembedding(model), options.n_token_groups, seed=options.seed)

    report = Report(f"tl_moe analysis of {options.model}", out)
    timings = {}
    tic = time.perf_counter()
    moe_results = _moe_pass(model, dataset, options, token_groups, checkpoints)
    timings["moe_pass_s"] = round(time.perf_counter() - tic, 1)

    dense_results = None
    if options.dense_baseline and "probing" in options.analyses:
        dense = tl_moe.load(options.dense_baseline, device=options.device)
        tic = time.perf_counter()
        dense_results = _dense_pass(dense, dataset, options, checkpoints)
        timings["dense_pass_s"] = round(time.perf_counter() - tic, 1)

    from tl_moe import analyze_sections as sections

    domain_names = moe_results["store"].domain_names if "store" in moe_results else _domain_names(dataset)
    if "probing" in options.analyses:
        tic = time.perf_counter()
        moe_frame, dense_frame = sections.probing_section(
            report, model.moe_cfg, moe_results, dense_results, options
        )
        if options.sparsity_family:
            family = _probe_family(options, dataset, checkpoints, {options.model: (model.moe_cfg, moe_frame)})
            sections.sparsity_section(report, family, dense_frame, options)
        timings["probing_s"] = round(time.perf_counter() - tic, 1)
    if "specialization" in options.analyses:
        sections.specialization_section(report, model, moe_results, domain_names, token_groups, options)
    if "domains" in options.analyses:
        sections.domain_section(report, model, moe_results, domain_names, options)
    if "logit_lens" in options.analyses and "logit_lens" in moe_results:
        sections.logit_lens_section(report, model, moe_results, options)

    timings["total_s"] = round(time.perf_counter() - started, 1)
    report.add_metadata(
        {
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
            "moe_config": model.moe_cfg.to_dict(),
            "timings": timings,
            "versions": _versions(),
            "tokens_by_domain": dict(
                zip(domain_names, moe_results["tokens_by_domain"].tolist(), strict=True)
            ),
        }
    )
    path = report.write()
    (out / "run.json").write_text(json.dumps({"timings": timings}, indent=2))
    return path


def _domain_names(dataset) -> tuple[str, ...]:
    from tl_moe.collect import domain_names

    return tuple(domain_names(dataset))


def _versions() -> dict:
    import transformer_lens
    import transformers

    import tl_moe

    return {
        "tl_moe": tl_moe.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "transformer_lens": getattr(transformer_lens, "__version__", "?"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }
