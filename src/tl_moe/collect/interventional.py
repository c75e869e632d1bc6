"""Interventional passes: extra forwards of the same batch under expert interventions.

An accumulator that subclasses :class:`InterventionalAccumulator` lists the
:class:`~tl_moe.models.interventions.Intervention` s it wants (``interventions(model)``);
for every batch of ``collect`` the engine runs them and hands the accumulator an
:class:`InterventionEffects`: the next-token loss of every position under every
intervention, next to the clean one, laid out ``[batch, pos]`` like :class:`BatchMeta`.

Why it is cheap (see docs/INTERVENTIONS.md):

1. **Reuse below the layer.** The clean forward records the residual stream entering every
   layer an intervention edits. An intervention at layer L resumes from there and runs only
   blocks L.. (the decoder's blocks below L are temporarily replaced by pass-throughs, so every
   later block keeps its index and gets its own kind of mask, e.g. linear- vs full-attention
   layers of a hybrid; TransformerBridge's ``start_at_layer`` injects the residual). On the
   first batch each resumed forward of the unedited batch is checked against the clean
   forward's final residual; where they differ, the runner falls back to edited forwards of
   the whole model from the tokens (slower, exact) for the rest of the run, and says so
   (``InterventionEffects.resumed``).
2. **Many ablations per forward.** The batch is replicated, one copy per intervention, and
   edited per row (:func:`~tl_moe.models.interventions.batched_hooks`), as many copies per
   forward as ``memory_budget`` allows.
3. **Readout only where something changed.** The forward stops at the final residual; the
   final norm, unembedding and log-softmax (which dominate small models) are recomputed only at
   positions whose final residual differs (by more than one rounding step) from that of a clean
   copy of the batch run in the same forward; in chunks. E.g. zeroing an expert of the last layer changes only
   the tokens routed to it.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import nn

from tl_moe.collect.accumulator import Accumulator, Activations
from tl_moe.collect.meta import BatchMeta
from tl_moe.models.interventions import Intervention, batched_hooks
from tl_moe.models.introspect import config_of, hf_model_of

FINAL_RESIDUAL = "ln_final.hook_in"
"""Hook of the final residual stream (the input of the final norm)."""

RESUME_TOLERANCE = 16
"""Rounding steps (of each position's largest component) by which a resumed forward of the
unedited batch may differ from the clean forward before the runner stops resuming."""

Edit = Intervention | tuple[Intervention, ...]
"""One intervention, or several applied together in the same forward."""


def _as_edit(edit: Any) -> Edit:
    if isinstance(edit, Intervention):
        return edit
    if isinstance(edit, Sequence) and edit and all(isinstance(e, Intervention) for e in edit):
        return tuple(edit)
    raise TypeError(f"interventions(model) must return Interventions or tuples of them; got {edit!r}.")


def _start_layer(edit: Edit, n_layers: int) -> int:
    edits = (edit,) if isinstance(edit, Intervention) else edit
    return min(e.layer % n_layers for e in edits)


def describe(edit: Edit) -> Any:
    """JSON-able form of an edit (for ``config()`` and fingerprints)."""
    return edit.as_dict() if isinstance(edit, Intervention) else [e.as_dict() for e in edit]


@dataclass(frozen=True)
class InterventionEffects:
    """What one batch's interventional forwards give an accumulator.

    Positions follow :class:`BatchMeta`: ``[batch, pos]``; the value at ``(b, p)`` is the loss
    of predicting token ``p + 1`` from position ``p`` (TransformerLens's ``loss_per_token``
    convention, padded to ``pos`` columns). Positions without a real next token (the last one,
    padding) are ``valid == False`` and hold 0.

    Attributes:
        interventions: the edits, in the order the accumulator listed them.
        clean_loss: next-token loss without intervention.
        loss: next-token loss under each edit.
        valid: positions whose token and next token are real.
        changed: positions whose final residual differs from the clean one (the others have
            ``loss == clean_loss`` exactly, without recomputation).
        acts: the clean forward's hooked tensors (those in ``hook_names``), as ``update`` got.
        clean_logits / logits: ``[batch, pos, vocab]`` / ``[n, batch, pos, vocab]`` when the
            accumulator sets ``needs_logits``; else None.
        resumed: True when the edited forwards resumed from the layer each edit touches; False
            when they were forwards of the whole model from the tokens (the fallback for a
            model whose resumed forward does not reproduce its clean one).
    """

    interventions: tuple[Edit, ...]
    clean_loss: Float[torch.Tensor, "batch pos"]
    loss: Float[torch.Tensor, "n batch pos"]
    valid: Bool[torch.Tensor, "batch pos"]
    changed: Bool[torch.Tensor, "n batch pos"]
    acts: Activations
    clean_logits: Float[torch.Tensor, "batch pos vocab"] | None = None
    logits: Float[torch.Tensor, "n batch pos vocab"] | None = None
    resumed: bool = True

    @property
    def loss_change(self) -> Float[torch.Tensor, "n batch pos"]:
        """``loss - clean_loss`` (0 at invalid positions)."""
        return self.loss - self.clean_loss


class InterventionalAccumulator(Accumulator, ABC):
    """An accumulator that also receives forwards of each batch under interventions.

    Implement ``interventions(model)`` (what to run; fixed for a run, part of ``config()``)
    and ``update_effects(effects, meta)``; plus ``merge``/``state_dict``/``load_state_dict``/
    ``finalize`` as for any :class:`Accumulator`. ``hook_names`` (default: none) names clean
    hooks wanted in ``effects.acts``; ``update`` (default: nothing) still receives the clean
    batch first. Set ``needs_logits = True`` to receive full logits (costly: no readout is
    skipped).
    """

    needs_logits: bool = False

    @abstractmethod
    def interventions(self, model: Any) -> Sequence[Edit]:
        """The edits to run on every batch, each an Intervention or a tuple applied together."""

    @abstractmethod
    def update_effects(self, effects: InterventionEffects, meta: BatchMeta) -> None:
        """Fold in one batch's effects (``effects.loss[i]`` is under ``effects.interventions[i]``)."""

    def hook_names(self, model: Any) -> list[str]:
        return []

    def wants_effects(self, meta: BatchMeta) -> bool:
        """Whether this batch's edits should run for this accumulator (e.g. False once a token
        budget is spent); when no accumulator wants them, the batch runs no edited forward."""
        return True

    def update(self, acts: Activations, meta: BatchMeta) -> None:
        return None


class _ReachedFinalResidual(Exception):
    pass


class _SkippedBlock(nn.Module):
    """Stands in for a decoder block below the resume layer: hands its hidden states on unchanged
    (the resume block replaces them by the injected residual). Being in the block's place keeps
    the index of every later block, by which decoders pick its mask and position inputs."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


@contextmanager
def only_blocks_from(model: Any, layer: int) -> Iterator[None]:
    """Run only decoder blocks ``layer..`` while inside (blocks below are pass-throughs).

    Combined with ``model(resid, start_at_layer=layer)``, blocks below ``layer`` are not
    computed at all (``start_at_layer`` alone computes and discards them). The layer list keeps
    its length, so a decoder that looks up per-layer inputs by position in the list (the
    linear- or full-attention mask of a hybrid, sliding-window or full masks) gives every block
    its own.
    """
    if layer == 0:
        yield
        return
    base = getattr(hf_model_of(model), "model", None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError("resumed forwards need a decoder with a `model.layers` ModuleList.")
    base.layers = nn.ModuleList([_SkippedBlock() for _ in range(layer)] + list(layers)[layer:])
    try:
        yield
    finally:
        base.layers = layers


def readout_loss(
    model: Any,
    final_residual: Float[torch.Tensor, "n d_model"],
    targets: torch.Tensor,
) -> Float[torch.Tensor, " n"]:
    """Next-token loss from final residuals: final norm, unembedding, ``logsumexp - target logit``
    (the log-softmax at the target, without materializing it over the vocabulary)."""
    logits = model.unembed(model.ln_final(final_residual.unsqueeze(0)))[0].float()
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets[:, None].long())[:, 0]


def _readout_logits(model: Any, final_residual: torch.Tensor) -> torch.Tensor:
    return model.unembed(model.ln_final(final_residual))


class InterventionRunner:
    """Runs the edits of a set of interventional accumulators on one batch (used by ``collect``).

    Args:
        model: the bridge.
        accumulators: name -> InterventionalAccumulator (their edits are deduplicated: an edit
            two accumulators ask for runs once).
        memory_budget: bytes of activations one suffix forward may use (rough estimate); sets
            how many replicated copies of the batch run per forward, and the readout chunk.
        edits: extra edits to run (what :func:`run_interventions` uses, without accumulators).
        needs_logits: also compute full logits (else only if an accumulator asks).
        resume: True to resume every edit from the layer it touches, False to run edited
            forwards of the whole model from the tokens; None (default) resumes unless, on the
            first batch, a resumed forward of the unedited batch differs from the clean forward
            (by more than ``RESUME_TOLERANCE`` rounding steps), then runs whole-model forwards
            from then on. ``resume`` holds the decision once made.
    """

    def __init__(
        self,
        model: Any,
        accumulators: Mapping[str, InterventionalAccumulator] | None = None,
        memory_budget: int = 1 << 30,
        *,
        edits: Sequence[Edit] = (),
        needs_logits: bool = False,
        resume: bool | None = None,
    ) -> None:
        if resume not in (None, True, False):
            raise ValueError(f"resume must be True, False or None, got {resume!r}.")
        self.resume = resume
        if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}.")
        self.model = model
        self.cfg = config_of(model)
        self.memory_budget = int(memory_budget)
        self.accumulators = dict(accumulators or {})
        self.edits: list[Edit] = []
        self.positions: dict[str, list[int]] = {}
        index: dict[Edit, int] = {}

        def add(edit: Edit) -> int:
            if edit not in index:
                index[edit] = len(self.edits)
                self.edits.append(edit)
            return index[edit]

        for edit in edits:
            add(_as_edit(edit))
        for name, acc in self.accumulators.items():
            self.positions[name] = [add(_as_edit(e)) for e in acc.interventions(model)]
        self.needs_logits = needs_logits or any(acc.needs_logits for acc in self.accumulators.values())
        self.start_layers = sorted({_start_layer(e, self.cfg.n_layers) for e in self.edits})
        batched_hooks(
            model, self.edits
        )  # every edit is valid for this model (layers, experts), before any pass

    def hook_names(self) -> list[str]:
        """Clean hooks the runner needs: the residual entering each edited layer, the final one."""
        return [f"blocks.{layer}.hook_resid_pre" for layer in self.start_layers] + [FINAL_RESIDUAL]

    # -- sizes --------------------------------------------------------------------------------

    def _rows_per_forward(self, seq_len: int) -> int:
        cfg = self.cfg
        per_token = 4 * (
            16 * cfg.d_model + 4 * cfg.experts_per_token * cfg.d_expert + 3 * cfg.n_heads * seq_len
        )
        return max(1, self.memory_budget // max(1, seq_len * per_token))

    def _readout_chunk(self) -> int:
        return max(1, self.memory_budget // (3 * 4 * self.cfg.d_vocab))

    # -- the pass -----------------------------------------------------------------------------

    def run(self, acts: Activations, meta: BatchMeta, input_device: torch.device) -> None:
        """Compute every edit's per-token loss on this batch and feed the accumulators."""
        wanting = {name: acc for name, acc in self.accumulators.items() if acc.wants_effects(meta)}
        if not wanting:
            return
        every = self.effects(acts, meta.input_ids, meta.attention_mask, input_device)
        device = meta.input_ids.device
        for name, acc in wanting.items():
            chosen = self.positions[name]
            effects = InterventionEffects(
                interventions=tuple(self.edits[i] for i in chosen),
                clean_loss=every.clean_loss.to(device),
                loss=every.loss[chosen].to(device),
                valid=every.valid.to(device),
                changed=every.changed[chosen].to(device),
                acts=acts,
                clean_logits=None if every.clean_logits is None else every.clean_logits.to(device),
                logits=None if every.logits is None else every.logits[chosen].to(device),
                resumed=every.resumed,
            )
            acc.update_effects(effects, meta)

    def effects(
        self,
        acts: Activations,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        input_device: torch.device,
    ) -> InterventionEffects:
        """Every edit's per-token loss on one batch, from the clean forward's ``acts``
        (which hold at least :meth:`hook_names`)."""
        model = self.model
        mask = attention_mask.to(input_device).bool()
        targets = torch.zeros_like(input_ids)
        targets[:, :-1] = input_ids[:, 1:]
        targets = targets.to(input_device)
        valid = torch.zeros_like(mask)
        valid[:, :-1] = mask[:, :-1] & mask[:, 1:]
        clean_final = acts[FINAL_RESIDUAL].to(input_device)
        batch, pos = mask.shape

        clean_loss = torch.zeros(batch, pos, device=input_device)
        clean_loss[valid] = self._loss_at(clean_final[valid], targets[valid])
        clean_logits = _readout_logits(model, clean_final) if self.needs_logits else None

        n = len(self.edits)
        loss = clean_loss.expand(n, batch, pos).clone()
        changed = torch.zeros(n, batch, pos, dtype=torch.bool, device=input_device)
        logits = None
        if self.needs_logits:
            logits = clean_logits.expand(n, *clean_logits.shape).clone()
        # Each forward holds one clean copy of the batch next to the edited copies: positions
        # whose final residual equals the clean copy's to within one rounding step of the
        # position's largest component keep the clean loss. (The clean forward itself is not a
        # reference at that precision: kernels round differently at another batch size.)
        per_forward = max(1, self._rows_per_forward(pos) // batch - 1)
        attention = mask.to(input_ids.dtype)
        if self.resume is None:
            self.resume = all(
                self._resumes_exactly(acts, attention, layer, clean_final, mask)
                for layer in self.start_layers
            )
            if not self.resume:
                warnings.warn(
                    "a forward resumed from an edited layer does not reproduce this model's clean forward: "
                    "every edited forward runs on the whole model (exact, slower).",
                    stacklevel=2,
                )
        for layer, members in self._groups():
            if layer is None:
                inputs = input_ids.to(input_device)
            else:
                inputs = acts[f"blocks.{layer}.hook_resid_pre"].to(input_device)
            for start in range(0, len(members), per_forward):
                chunk = members[start : start + per_forward]
                rows = [None] * batch + [self.edits[i] for i in chunk for _ in range(batch)]
                copies = len(chunk) + 1
                final = self._final_residual(
                    inputs.repeat(copies, *([1] * (inputs.ndim - 1))),
                    attention.repeat(copies, 1),
                    layer,
                    rows,
                ).reshape(copies, batch, pos, -1)
                reference, final = final[0], final[1:]
                step = torch.finfo(final.dtype).eps * reference.abs().amax(-1, keepdim=True)
                differs = ((final - reference.unsqueeze(0)).abs() > step).any(-1)
                redo = differs & valid.unsqueeze(0)
                if bool(redo.any()):
                    expanded_targets = targets.expand(len(chunk), batch, pos)
                    loss[chunk] = loss[chunk].index_put(
                        torch.nonzero(redo, as_tuple=True), self._loss_at(final[redo], expanded_targets[redo])
                    )
                changed[chunk] = differs
                if logits is not None:
                    logits[chunk] = _readout_logits(model, final.flatten(0, 1)).reshape(
                        len(chunk), batch, pos, -1
                    )
                del final, reference

        return InterventionEffects(
            interventions=tuple(self.edits),
            clean_loss=clean_loss,
            loss=loss,
            valid=valid,
            changed=changed,
            acts=acts,
            clean_logits=clean_logits,
            logits=logits,
            resumed=bool(self.resume),
        )

    def on_batch(
        self,
        input_ids: Int[torch.Tensor, "batch pos"],
        attention_mask: Bool[torch.Tensor, "batch pos"] | None = None,
        *,
        hook_names: Sequence[str] = (),
    ) -> InterventionEffects:
        """One batch outside ``collect``: its clean forward (stopped at the final residual), then
        :meth:`effects`. A runner kept over many batches checks the resumed forward once
        (:func:`run_interventions` builds a runner per call)."""
        model = self.model
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        names = list(dict.fromkeys([*hook_names, *self.hook_names()]))
        acts: dict[str, torch.Tensor] = {}

        def stash_as(name: str):
            def stash(x, hook):
                acts[name] = x
                if len(acts) == len(names):
                    raise _ReachedFinalResidual

            return stash

        with torch.inference_mode(), model.hooks(fwd_hooks=[(name, stash_as(name)) for name in names]):
            try:
                model(input_ids, attention_mask=attention_mask.to(input_ids.dtype), return_type=None)
            except _ReachedFinalResidual:
                pass
        missing = [name for name in names if name not in acts]
        if missing:
            raise RuntimeError(f"these hooks did not fire during the clean forward: {missing}.")
        with torch.inference_mode():
            return self.effects(acts, input_ids, attention_mask, input_ids.device)

    def _groups(self) -> list[tuple[int | None, list[int]]]:
        """Edits by the layer their forwards resume from (None: whole-model forwards from the tokens)."""
        if not self.resume:
            return [(None, list(range(len(self.edits))))]
        n_layers = self.cfg.n_layers
        return [
            (layer, [i for i, e in enumerate(self.edits) if _start_layer(e, n_layers) == layer])
            for layer in self.start_layers
        ]

    def _resumes_exactly(
        self,
        acts: Activations,
        attention_mask: Int[torch.Tensor, "batch pos"],
        layer: int,
        clean_final: Float[torch.Tensor, "batch pos d_model"],
        real: Bool[torch.Tensor, "batch pos"],
    ) -> bool:
        """Whether the unedited batch resumed at ``layer`` reproduces the clean final residual at
        every real token, to within ``RESUME_TOLERANCE`` rounding steps of the position's largest
        component (the same batch size as the clean forward: the same kernels). A resumed forward
        that cannot be built for the model (an error other than running out of memory) does not."""
        resid = acts[f"blocks.{layer}.hook_resid_pre"].to(clean_final.device)
        try:
            resumed = self._final_residual(resid, attention_mask, layer, [None] * resid.shape[0])
        except torch.OutOfMemoryError:
            raise
        except (NotImplementedError, RuntimeError, TypeError, ValueError, IndexError, KeyError):
            return False
        step = RESUME_TOLERANCE * torch.finfo(clean_final.dtype).eps
        bound = step * clean_final.abs().amax(-1, keepdim=True)
        return bool(((resumed - clean_final).abs() <= bound).all(-1)[real].all())

    def _loss_at(self, final: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Readout loss of ``[m, d_model]`` final residuals, ``readout_chunk`` rows at a time."""
        step = self._readout_chunk()
        pieces = [
            readout_loss(self.model, final[i : i + step], targets[i : i + step])
            for i in range(0, final.shape[0], step)
        ]
        return torch.cat(pieces) if pieces else final.new_zeros(0)

    def _final_residual(
        self, inputs: torch.Tensor, attention_mask: torch.Tensor, layer: int | None, rows: list[Edit | None]
    ) -> Float[torch.Tensor, "rows pos d_model"]:
        """The final residual stream under per-row edits: blocks ``layer..`` run on ``inputs``, the
        residual entering ``layer`` (``[rows, pos, d_model]``); or, with ``layer`` None, the whole
        model on ``inputs``, token ids (``[rows, pos]``)."""
        captured: dict[str, torch.Tensor] = {}

        def grab(x, hook):
            captured["final"] = x
            raise _ReachedFinalResidual

        hooks = batched_hooks(self.model, rows) + [(FINAL_RESIDUAL, grab)]
        resume = {} if layer is None else {"start_at_layer": layer}
        with only_blocks_from(self.model, layer or 0), self.model.hooks(fwd_hooks=hooks):
            try:
                self.model(inputs, attention_mask=attention_mask, return_type=None, **resume)
            except _ReachedFinalResidual:
                pass
        if "final" not in captured:
            raise RuntimeError(f"the final residual hook {FINAL_RESIDUAL!r} did not fire.")
        return captured["final"]


def run_interventions(
    model: Any,
    input_ids: Int[torch.Tensor, "batch pos"],
    interventions: Sequence[Edit],
    *,
    attention_mask: Bool[torch.Tensor, "batch pos"] | None = None,
    hook_names: Sequence[str] = (),
    logits: bool = False,
    memory_budget: int = 1 << 30,
    resume: bool | None = None,
) -> InterventionEffects:
    """Per-token loss of one batch under each intervention, with the reuse of :func:`collect`.

    The same computation as an :class:`InterventionalAccumulator` gets inside ``collect``, for a
    notebook or a script: one clean forward (stopped at the final residual), then each
    intervention resumed from the layer it edits, many per forward, read out only where the
    final residual changed.

    Args:
        model: a tl_moe-loaded bridge.
        input_ids: the batch.
        interventions: Interventions (or tuples of them applied together).
        attention_mask: True on real tokens (default: all real).
        hook_names: clean hooks to return in ``effects.acts``.
        logits: also return full logits (memory: ``n × batch × pos × vocab``).
        memory_budget: rough activation bytes per forward.
        resume: resume each edit from its layer (True), run the whole model (False), or resume
            where a resumed forward reproduces the clean one (None, see :class:`InterventionRunner`);
            ``effects.resumed`` says which ran.

    Example::

        edits = [Intervention("remove", 3, e) for e in range(16)]
        effects = run_interventions(model, tokens, edits)
        effects.loss_change[effects.valid.expand_as(effects.loss)]  # per-token effect of each removal
    """
    runner = InterventionRunner(
        model, edits=interventions, memory_budget=memory_budget, needs_logits=logits, resume=resume
    )
    return runner.on_batch(input_ids, attention_mask, hook_names=hook_names)
