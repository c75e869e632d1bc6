"""``collect``: the one streaming pass from a corpus to finalized accumulator results.

corpus -> windows -> batches with metadata -> ONE forward per batch with the union of
the hooks every accumulator asks for -> each accumulator folds in the hooked tensors ->
(reduce across processes) -> finalize. Only the current batch's tensors are alive at
any time, so memory does not grow with the corpus.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tl_moe.collect.accumulator import Accumulator
from tl_moe.collect.batching import (
    BatchBuilder,
    ConceptLabeler,
    StreamCursor,
    check_corpus,
    domain_names,
    iter_windows,
    plan_batches,
)
from tl_moe.collect.capture import ActivationCapture, check_hook_names
from tl_moe.collect.checkpoint import (
    checkpoint_path,
    discard_checkpoint,
    fingerprint,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng_state,
    save_checkpoint,
)
from tl_moe.collect.distributed import Shard, distributed_is_active, process_shard, reduce_across_processes
from tl_moe.collect.gradients import GradientAccumulator, GradientRunner
from tl_moe.collect.interventional import InterventionalAccumulator, InterventionRunner


def model_device(model: Any) -> torch.device:
    """Where the model takes its inputs: ``cfg.device`` if set, else its first parameter's device."""
    configured = getattr(getattr(model, "cfg", None), "device", None)
    if configured is not None:
        return torch.device(configured)
    parameter = next(model.parameters(), None) if hasattr(model, "parameters") else None
    return parameter.device if parameter is not None else torch.device("cpu")


def collect(
    model: Any,
    dataset: Any,
    accumulators: Mapping[str, Accumulator],
    *,
    batch_size: int = 8,
    seq_len: int = 128,
    max_tokens: int | None = None,
    concept_labeler: ConceptLabeler | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    device: torch.device | str | None = None,
    progress: bool = True,
    stop_early: bool = True,
    tokenizer: Any = None,
    shard: tuple[int, int] | None = None,
    fresh: bool = False,
    keep_checkpoint: bool = True,
    intervention_memory: int = 1 << 30,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``dataset`` once and return each accumulator's finalized result.

    Args:
        model: any TransformerLens model with ``hooks(fwd_hooks=...)`` (TransformerBridge,
            HookedRootModule) whose forward takes ``(input_ids, attention_mask=...,
            return_type=None)``.
        dataset: a ``datasets.Dataset`` with a ``text`` column and optionally ``domain``.
        accumulators: name -> accumulator; the result dict uses the same names. Pass
            fresh accumulators: they are updated in place (after a distributed run
            they hold the state reduced over all processes).
        batch_size: windows per forward.
        seq_len: tokens per window, BOS included (see :mod:`tl_moe.collect.batching`).
        max_tokens: cap on real tokens processed (over all processes); None for the
            whole corpus.
        concept_labeler: ``(text, offsets) -> Bool[n_tokens, n_concepts]``, called per
            document; fills ``BatchMeta.concept_labels``. Needs a fast tokenizer.
        checkpoint_dir: where to checkpoint; a rerun with the same arguments resumes
            from the last checkpoint there and gives exactly the uninterrupted result.
            A rerun with different arguments, model weights or corpus content raises
            ``CheckpointMismatchError`` (``.field`` names what differs); an empty,
            truncated or damaged checkpoint file raises ``CheckpointCorruptError``.
        checkpoint_every: checkpoint after every this many batches of this process.
        device: where hooked tensors are gathered and accumulators compute; defaults
            to the model's device. For models split over devices (accelerate
            ``device_map``) every hooked tensor is moved here inside its hook.
        progress: show a tqdm bar (tokens and tokens/s) on the first process.
        stop_early: stop each forward once the last needed hook has fired.
        tokenizer: defaults to ``model.tokenizer``.
        shard: ``(position, count)`` to process only batches ``position`` modulo
            ``count`` and return unreduced results, for independent jobs merged later
            with ``Accumulator.merge``. When None and ``torch.distributed`` is
            initialized, each rank takes its shard and results are reduced over ranks.
        fresh: ignore any checkpoint in ``checkpoint_dir`` (mismatching or damaged
            ones included) and start over, overwriting it.
        keep_checkpoint: False to delete this process's checkpoint once the pass has
            finished and its results are finalized. A multi-pass job that wants to
            resume after a later step fails should keep them and call
            ``remove_checkpoints(directory)`` when the whole job is done.
        intervention_memory: activation bytes one interventional forward may use (a rough
            budget): how many edited copies of a batch run per forward for
            :class:`~tl_moe.collect.interventional.InterventionalAccumulator` s.
        settings: the caller's settings that shaped ``dataset`` (e.g. ``{"seed": 0}``, the seed it
            was shuffled with), recorded in the checkpoint's fingerprint so that a resume with
            other settings is refused naming the setting.

    Returns:
        name -> ``accumulator.finalize()``.
    """
    if not accumulators:
        raise ValueError("no accumulators given: pass a dict of name -> Accumulator to fill.")
    for name, acc in accumulators.items():
        if not isinstance(acc, Accumulator):
            raise TypeError(f"accumulator {name!r} is a {type(acc).__name__}, not an Accumulator.")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive number of batches, got {checkpoint_every}.")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be positive or None, got {max_tokens}.")
    check_corpus(dataset)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("the model has no tokenizer; pass tokenizer=... to collect().")
    if concept_labeler is not None and not getattr(tokenizer, "is_fast", False):
        raise ValueError("concept labels need character offsets, which only fast tokenizers provide.")
    device = torch.device(device) if device is not None else model_device(model)
    hook_names = [name for acc in accumulators.values() for name in acc.hook_names(model)]
    interventional = {n: a for n, a in accumulators.items() if isinstance(a, InterventionalAccumulator)}
    runner = InterventionRunner(model, interventional, intervention_memory) if interventional else None
    if runner is not None:
        hook_names += runner.hook_names()
    differentiated = {n: a for n, a in accumulators.items() if isinstance(a, GradientAccumulator)}
    gradients = GradientRunner(model, differentiated) if differentiated else None
    check_hook_names(model, hook_names)
    reduce = shard is None and distributed_is_active()
    this_shard = process_shard() if shard is None else Shard(*shard)
    if next(iter_windows(dataset, tokenizer, seq_len=seq_len, max_tokens=max_tokens), None) is None:
        raise ValueError(
            f"the corpus yields zero tokens: all {len(dataset)} texts are empty after tokenization."
        )

    fields = (
        {}
        if checkpoint_dir is None
        else fingerprint(  # content digests only when resumable
            model=model,
            dataset=dataset,
            tokenizer=tokenizer,
            accumulators=accumulators,
            batch_size=batch_size,
            seq_len=seq_len,
            max_tokens=max_tokens,
            concept_labeler=concept_labeler,
            shard=(this_shard.position, this_shard.count),
            settings=settings,
        )
    )
    path = (
        None
        if checkpoint_dir is None
        else checkpoint_path(checkpoint_dir, this_shard.position, this_shard.count)
    )
    cursor, complete = StreamCursor(), False
    if path is not None:
        started = time.time()
        saved = None if fresh else load_checkpoint(path, fields=fields, device=device)
        remove_stale_temporaries(path, older_than=started)  # a kill during a write left them
        if saved is None:
            save_checkpoint(path, fields=fields, cursor=cursor, states=_states(accumulators), complete=False)
        else:
            for name, acc in accumulators.items():
                acc.load_state_dict(saved.states[name])
            restore_rng_state(saved.rng)
            cursor, complete = saved.cursor, saved.complete

    if not complete:
        _stream(
            model,
            dataset,
            tokenizer,
            accumulators,
            hook_names=hook_names,
            runner=runner,
            gradients=gradients,
            cursor=cursor,
            shard=this_shard,
            batch_size=batch_size,
            seq_len=seq_len,
            max_tokens=max_tokens,
            concept_labeler=concept_labeler,
            device=device,
            stop_early=stop_early,
            progress=progress,
            checkpoint=None if path is None else (path, fields, checkpoint_every),
        )
    if reduce:
        reduce_across_processes(accumulators)
    results = {name: acc.finalize() for name, acc in accumulators.items()}
    if path is not None and not keep_checkpoint:
        discard_checkpoint(path)
    return results


def _states(accumulators: Mapping[str, Accumulator]) -> dict[str, dict[str, Any]]:
    return {name: acc.state_dict() for name, acc in accumulators.items()}


def _stream(
    model: Any,
    dataset: Any,
    tokenizer: Any,
    accumulators: Mapping[str, Accumulator],
    *,
    hook_names: list[str],
    runner: InterventionRunner | None,
    cursor: StreamCursor,
    gradients: GradientRunner | None = None,
    shard: Shard,
    batch_size: int,
    seq_len: int,
    max_tokens: int | None,
    concept_labeler: ConceptLabeler | None,
    device: torch.device,
    stop_early: bool,
    progress: bool,
    checkpoint: tuple[Path, dict[str, Any], int] | None,
) -> None:
    """Feed every batch of this shard from ``cursor`` on to the accumulators, checkpointing."""
    builder = BatchBuilder(
        tokenizer, seq_len=seq_len, domain_names=domain_names(dataset), concept_labeler=concept_labeler
    )
    capture = ActivationCapture(hook_names, device, stop_early=stop_early)
    input_device = model_device(model)
    whole_stream = shard.count == 1
    bar = tqdm(
        total=max_tokens if whole_stream else None,
        initial=cursor.tokens_emitted if whole_stream else 0,
        unit="tok",
        unit_scale=True,
        desc="collect",
        disable=not progress or shard.position != 0,
    )
    batches = plan_batches(
        dataset,
        tokenizer,
        batch_size=batch_size,
        seq_len=seq_len,
        max_tokens=max_tokens,
        start=cursor,
        with_offsets=concept_labeler is not None,
    )
    processed = 0
    with torch.inference_mode(), model.hooks(fwd_hooks=capture.fwd_hooks()), bar:
        for planned in batches:
            cursor = planned.cursor_after
            if not shard.owns(planned.batch_index):
                continue
            meta = builder.build(planned)
            acts = capture.run(model, meta.input_ids.to(input_device), meta.attention_mask.to(input_device))
            meta = meta.to(device)
            for acc in accumulators.values():
                acc.update(acts, meta)
            if runner is not None:
                capture.paused = True
                try:
                    runner.run(acts, meta, input_device)
                finally:
                    capture.paused = False
            if gradients is not None:
                capture.paused = True
                try:
                    gradients.run(meta, input_device)
                finally:
                    capture.paused = False
            del acts
            bar.update(meta.n_tokens)
            processed += 1
            if checkpoint is not None and processed % checkpoint[2] == 0:
                save_checkpoint(
                    checkpoint[0],
                    fields=checkpoint[1],
                    cursor=cursor,
                    states=_states(accumulators),
                    complete=False,
                )
    if checkpoint is not None:
        save_checkpoint(
            checkpoint[0], fields=checkpoint[1], cursor=cursor, states=_states(accumulators), complete=True
        )
