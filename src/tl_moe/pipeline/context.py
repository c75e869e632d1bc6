"""What every analysis of a run can read: the options, the corpus split, the models, shared inputs.

Models are loaded on first use and kept for the run; the vocabulary clustering is computed once,
from the analyzed model's unembedding, only if some analysis asks for it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int

from tl_moe.errors import InputError
from tl_moe.models.config import MoEConfig
from tl_moe.pipeline import catalog
from tl_moe.pipeline.options import RunOptions

if TYPE_CHECKING:
    from tl_moe.collect.steps import ResumableSteps, Step
    from tl_moe.workers import WorkerPool

__all__ = ["UNTRAINED", "RunContext", "untrained_base", "untrained_name", "unembedding"]

#: Prefix of a model name that means "the same architecture and config, random init (seeded)".
UNTRAINED = "untrained:"


def untrained_name(name: str, init: int = 0) -> str:
    """The run's name of the untrained null of model ``name`` (see :meth:`RunContext.model`); ``init``
    > 0: its further random initialization ``init`` (``untrained:initK:NAME``, seed: the run's + K)."""
    return UNTRAINED + (f"init{init}:" if init else "") + name


def untrained_base(name: str) -> tuple[str, int]:
    """The model an untrained null's ``name`` copies and its initialization (0: the run's seed)."""
    rest = name.removeprefix(UNTRAINED)
    match = re.fullmatch(r"init([1-9][0-9]*):(.+)", rest, flags=re.DOTALL)
    return (match[2], int(match[1])) if match else (rest, 0)


def unembedding(model: Any) -> torch.Tensor:
    """The unembedding matrix ``[d_model, d_vocab]`` of a bridge's Hugging Face model."""
    return model.original_model.get_output_embeddings().weight.detach().float().T


class RunContext:
    """The shared state of one run.

    Args:
        options: the run's settings.
        dataset: the corpus split to analyze (a ``datasets.Dataset`` with ``text`` and ``domain``);
            loaded from ``options.corpus`` when None.
        models: already loaded models by name (e.g. a model a notebook holds); others are loaded
            with :func:`tl_moe.load` when first needed.
        configs: model configs by name, for planning a run without loading any weights.
        analyses: names of the analyses this run includes (the runner gives them); default: those
            ``options.analyses`` resolves to, dependencies included.
    """

    def __init__(
        self,
        options: RunOptions,
        dataset: Any = None,
        models: dict[str, Any] | None = None,
        configs: dict[str, MoEConfig] | None = None,
        analyses: Sequence[str] | None = None,
    ):
        self.options = options
        #: The analyses of this run (an analysis reads whether one it ``uses`` is among them).
        self.analyses: tuple[str, ...] = (
            tuple(analyses) if analyses is not None else catalog.ordered_names(options.analyses)
        )
        self._dataset = dataset
        self._models: dict[str, Any] = dict(models or {})
        self._configs: dict[str, MoEConfig] = dict(configs or {})
        #: Where analyses save their resumable steps (``OUT/checkpoints``); None: nothing is saved.
        self.checkpoint_dir: Path | None = None
        #: Model name -> identity of its collection pass (digest of the pass's content fingerprint).
        self.pass_identities: dict[str, str] = {}
        #: :meth:`shared_steps` runners by what keys them.
        self._shared_steps: dict[str, Any] = {}

    @cached_property
    def dataset(self) -> Any:
        """The analyzed corpus split, shuffled with the seed so any token budget samples every domain."""
        if self._dataset is not None:
            return self._dataset
        from tl_moe.data.corpus import load_corpus
        from tl_moe.pipeline.checks import check_corpus_split

        corpus = load_corpus(self.options.corpus, require_domain=True)
        return check_corpus_split(corpus, self.options.split).shuffle(seed=self.options.seed)

    @cached_property
    def domain_names(self) -> tuple[str, ...]:
        """Names of the corpus domains, in the order of every domain axis."""
        from tl_moe.collect import domain_names

        return tuple(domain_names(self.dataset))

    def model(self, name: str) -> Any:
        """The loaded model called ``name`` (loaded with :func:`tl_moe.load` on first use).

        ``"untrained:NAME"`` is the untrained null of NAME: the same config, randomly initialised with
        the run's seed (:func:`tl_moe.models.build_model`), with NAME's tokenizer, booted through the
        same loading path as every other model; ``"untrained:initK:NAME"`` the same with the run's seed
        + K (:func:`untrained_name`).
        """
        if name not in self._models:
            from tl_moe.models import load

            if name.startswith(UNTRAINED):
                self._models[name] = self._untrained(*untrained_base(name))
            else:
                extra = {} if self.options.device_map is None else {"device_map": self.options.device_map}
                dtype = getattr(torch, self.options.dtype)
                model = load(name, device=self.options.device, dtype=dtype, **extra)
                self.check_tokenizer(name, model)
                self._models[name] = model
        return self._models[name]

    def check_tokenizer(self, name: str, model: Any = None) -> None:
        """Refuse the model ``name`` (default: loaded) whose tokenizer turns text into nothing (e.g. saved
        without a vocabulary): every document of the corpus would be empty."""
        from tl_moe.pipeline.checks import check_tokenizer

        tokenizer = getattr(self.model(name) if model is None else model, "tokenizer", None)
        if tokenizer is not None:
            input_name = "--dense-baseline" if name == self.options.dense_baseline else "--model"
            check_tokenizer(tokenizer, f"{input_name} {name}", input_name=input_name)

    def _untrained(self, base: str, init: int = 0) -> Any:
        import tempfile

        from tl_moe.models import build_model, load, save_model
        from tl_moe.models.build import build_model_from_config

        trained = self.model(base)
        seed = self.options.seed + init
        hf_config = getattr(getattr(trained, "original_model", None), "config", None)
        if hf_config is None:
            hf_model = build_model(trained.moe_cfg, seed=seed)
        else:  # the trained model's own config: keeps what MoEConfig does not describe (e.g. MLA sizes)
            hf_model = build_model_from_config(hf_config, seed=seed)
        with tempfile.TemporaryDirectory(prefix="tl_moe_untrained_") as directory:
            save_model(hf_model, trained.tokenizer, directory)
            return load(directory, device=self.options.device, dtype=getattr(torch, self.options.dtype))

    def release(self, name: str) -> None:
        """Forget the loaded model ``name`` (its pass is done; frees its memory); its config is kept."""
        model = self._models.pop(name, None)
        if model is not None and hasattr(model, "moe_cfg"):
            self._configs.setdefault(name, model.moe_cfg)

    def config(self, name: str) -> MoEConfig:
        """The :class:`MoEConfig` of the model called ``name`` (the planner gives configs without weights)."""
        if name in self._configs:
            return self._configs[name]
        return self.model(name).moe_cfg

    @property
    def main(self) -> str:
        """Name of the analyzed MoE."""
        return self.options.model

    @property
    def dense(self) -> str | None:
        """Name of the dense baseline, or None."""
        return self.options.dense_baseline

    @cached_property
    def token_groups(self) -> Int[torch.Tensor, " vocab"]:
        """Spherical k-means cluster of every vocabulary token (the analyzed model's unembedding)."""
        from tl_moe.analysis.clustering import cluster_vocabulary

        self.check_token_groups()
        return cluster_vocabulary(
            unembedding(self.model(self.main)), self.options.n_token_groups, seed=self.options.seed
        )

    def check_token_groups(self) -> None:
        """Refuse a ``--n-token-groups`` above the analyzed model's vocabulary (the clusters partition
        the rows of its unembedding), in one line, without clustering."""
        from tl_moe.pipeline.checks import check_n_token_groups

        check_n_token_groups(self.options.n_token_groups, self.config(self.main).d_vocab, self.main)

    def steps(self, analysis: str, settings: Mapping[str, Any], models: Sequence[str]) -> ResumableSteps:
        """The resumable-step runner of ``analysis`` (see :mod:`tl_moe.collect.steps`).

        Its steps are keyed by ``settings`` (the options their values depend on) and by the pass
        identities of ``models`` (weights, corpus, pass arguments); it saves nothing when the run
        writes no checkpoints or a model's pass has no identity.
        """
        from tl_moe.collect.steps import ResumableSteps

        identities = {model: self.pass_identities.get(model) for model in models}
        directory = None
        if self.checkpoint_dir is not None and all(identities.values()):
            directory = self.checkpoint_dir / analysis
        fields = {"analysis": analysis, "settings": dict(settings), "passes": identities}
        return ResumableSteps(directory, fields, fresh=self.options.fresh)

    def workers(self) -> int:
        """The worker processes the run's independent pieces of work go to: ``--workers``, else torch's
        thread budget up to :data:`~tl_moe.defaults.MAX_DEFAULT_WORKERS` (so 1 where the load-aware
        budget is one thread); 1 where processes cannot be forked (:func:`~tl_moe.workers.can_fork`)."""
        from tl_moe.defaults import MAX_DEFAULT_WORKERS
        from tl_moe.workers import can_fork

        workers = self.options.workers
        if workers is None:
            workers = min(torch.get_num_threads(), MAX_DEFAULT_WORKERS)
        return workers if can_fork() else 1

    def worker_pool(self) -> WorkerPool:
        """A :class:`~tl_moe.workers.WorkerPool` of :meth:`workers` processes sharing torch's threads."""
        from tl_moe.workers import WorkerPool

        return WorkerPool(self.workers())

    def shared_steps(self, analysis: str, settings: Mapping[str, Any], models: Sequence[str]) -> Step:
        """:meth:`steps`, one runner per fingerprint for the whole run, that also keeps every value in
        memory (:class:`~tl_moe.collect.steps.RememberedSteps`): for steps several analyses compute alike
        (the dense twin's held-out arms, the same for the analyzed MoE and every family member), computed
        once whether or not the run saves checkpoints."""
        import json

        from tl_moe.collect.steps import RememberedSteps

        identities = {model: self.pass_identities.get(model) for model in models}
        key = json.dumps([analysis, dict(settings), identities], sort_keys=True, default=str)
        if key not in self._shared_steps:  # built once: with --fresh, building discards saved steps
            self._shared_steps[key] = RememberedSteps(self.steps(analysis, settings, models))
        return self._shared_steps[key]

    def probed_layers(self) -> tuple[int, ...]:
        """The sparse layers whose experts are probed: ``--probe-layers``, or all of them."""
        cfg = self.config(self.main)
        chosen = self.options.config("probing").layers
        if chosen is None:
            return tuple(cfg.sparse_layers)
        wrong = [layer for layer in chosen if layer not in cfg.sparse_layers]
        if wrong:
            raise InputError(
                f"--probe-layers {wrong} are not sparse layers of {self.main}; "
                f"its sparse layers: {list(cfg.sparse_layers)}."
            )
        return tuple(sorted(set(chosen)))
