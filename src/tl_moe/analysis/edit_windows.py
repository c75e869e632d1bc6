"""Held-out windows of documents and their per-window loss under many expert edits.

The re-weighting and steering analyses (:mod:`tl_moe.analysis.reweighting`,
:mod:`tl_moe.analysis.steering`) choose edits on one half of the documents and report them on the
other. This module holds what both need:

- :func:`document_windows`: ``[BOS, tokens…]`` windows of chosen corpus rows, right-padded, each
  tagged with its corpus row and group (domain, or language), under a token budget per group;
- :func:`routed_counts`: the clean routing counts of every expert per window;
- :func:`edit_losses`: Σ over each window's next-token positions of ``loss(edited) − loss(clean)``
  for many edits, through the batched interventional pass
  (:func:`tl_moe.collect.interventional.run_interventions`: many edits per forward, each resumed
  from the layer it edits);
- :func:`by_document` / :func:`ratio_intervals`: per-document sums and the ratio
  ``Σ_doc sums / Σ_doc counts`` with a 95% document-bootstrap interval
  (:func:`tl_moe.analysis.stats.cluster_bootstrap`, documents as clusters).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from tl_moe.analysis.drivers import HALVES_KEY
from tl_moe.analysis.splits import document_split
from tl_moe.analysis.stats import MIN_DOCUMENTS, Interval, cluster_bootstrap
from tl_moe.collect.interventional import Edit, InterventionRunner
from tl_moe.models.hook_names import get_act_name

__all__ = [
    "held_out_windows",
    "Windows",
    "by_document",
    "document_windows",
    "edit_losses",
    "ratio_intervals",
    "routed_counts",
]


@dataclass(frozen=True)
class Windows:
    """Token windows, each from one document.

    Attributes:
        input_ids: ``[window, pos]`` token ids (BOS first when the tokenizer has one; padding 0).
        attention_mask: True on real tokens (a window's real tokens are a prefix).
        doc: the corpus row of each window's document.
        group: the group (domain, or language) of each window's document.
    """

    input_ids: Int[torch.Tensor, "window pos"]
    attention_mask: Bool[torch.Tensor, "window pos"]
    doc: Int[torch.Tensor, " window"]
    group: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.group)

    def select(self, keep: Bool[torch.Tensor, " window"] | Sequence[bool]) -> Windows:
        """The windows where ``keep`` is True."""
        keep = torch.as_tensor(keep, dtype=torch.bool)
        return Windows(
            self.input_ids[keep],
            self.attention_mask[keep],
            self.doc[keep],
            tuple(g for g, k in zip(self.group, keep.tolist(), strict=True) if k),
        )

    def of_group(self, name: str) -> Windows:
        return self.select([g == name for g in self.group])

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def document_windows(
    dataset: Any,
    tokenizer: Any,
    rows: Sequence[int],
    *,
    seq_len: int,
    tokens_per_group: int,
    group_column: str = "domain",
    per_document: int = 2,
) -> Windows:
    """Windows of the corpus rows ``rows`` (in that order), at most ``per_document`` per document,
    until each group (value of ``group_column``) holds ``tokens_per_group`` real tokens.

    A window is ``[BOS] + seq_len - 1`` tokens (no BOS when the tokenizer has none); a document's
    last, shorter piece is kept (padded) when it has at least two tokens.
    """
    bos = tokenizer.bos_token_id
    lead = [] if bos is None else [int(bos)]
    chunk = seq_len - len(lead)
    taken: dict[str, int] = {}
    ids, masks, docs, groups = [], [], [], []
    for row in rows:
        document = dataset[int(row)]
        group = str(document.get(group_column))
        if taken.get(group, 0) >= tokens_per_group:
            continue
        tokens = tokenizer(str(document["text"] or ""), add_special_tokens=False)["input_ids"]
        for start in range(0, len(tokens), chunk)[:per_document]:
            piece = lead + list(tokens[start : start + chunk])
            if len(piece) < 2 or taken.get(group, 0) >= tokens_per_group:
                break
            window = torch.zeros(seq_len, dtype=torch.long)
            window[: len(piece)] = torch.tensor(piece)
            mask = torch.zeros(seq_len, dtype=torch.bool)
            mask[: len(piece)] = True
            ids.append(window)
            masks.append(mask)
            docs.append(int(row))
            groups.append(group)
            taken[group] = taken.get(group, 0) + len(piece)
    if not ids:
        return Windows(
            torch.zeros(0, seq_len, dtype=torch.long),
            torch.zeros(0, seq_len, dtype=torch.bool),
            torch.zeros(0, dtype=torch.long),
            (),
        )
    return Windows(torch.stack(ids), torch.stack(masks), torch.tensor(docs), tuple(groups))


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def routed_counts(
    model: Any, windows: Windows, layers: Sequence[int], *, batch_size: int = 16
) -> Int[torch.Tensor, "layer expert window"]:
    """Clean forward: how many real tokens of each window each expert of ``layers`` was routed."""
    n_experts = model.moe_cfg.num_experts
    out = torch.zeros(len(layers), n_experts, len(windows), dtype=torch.long)
    names = [get_act_name("topk_indices", layer) for layer in layers]
    device = _device(model)
    for start in range(0, len(windows), batch_size):
        ids = windows.input_ids[start : start + batch_size].to(device)
        mask = windows.attention_mask[start : start + batch_size]
        cache: dict[str, torch.Tensor] = {}

        def keep(tensor, hook, cache=cache):
            cache[hook.name] = tensor
            return tensor

        with torch.inference_mode():
            model.run_with_hooks(
                ids, attention_mask=mask.to(device).long(), fwd_hooks=[(n, keep) for n in names]
            )
        for row, name in enumerate(names):
            indices = cache[name].reshape(*ids.shape, -1).long().cpu()  # [batch, pos, k]
            hits = torch.nn.functional.one_hot(indices, n_experts).sum(-2) * mask.unsqueeze(-1)
            out[row, :, start : start + len(ids)] = hits.sum(1).T
    return out


@dataclass(frozen=True)
class EditLosses:
    """Per-window sums under each edit.

    Attributes:
        edits: the edits, in the order of ``change``'s first axis.
        change: Σ over the window's next-token positions of ``loss(edited) − loss(clean)`` (nats).
        clean: Σ of the clean loss over the same positions.
        count: next-token positions per window (both tokens real).
    """

    edits: tuple[Edit, ...]
    change: Float[torch.Tensor, "edit window"]
    clean: Float[torch.Tensor, " window"]
    count: Int[torch.Tensor, " window"]


def edit_losses(
    model: Any,
    windows: Windows,
    edits: Sequence[Edit],
    *,
    batch_size: int = 16,
    memory_budget: int = 1 << 30,
    progress: bool = False,
    description: str = "edited forwards",
) -> EditLosses:
    """Σ per window of the loss change under every edit (the batched interventional pass)."""
    from tqdm.auto import tqdm

    edits = tuple(edits)
    change = torch.zeros(len(edits), len(windows), dtype=torch.float64)
    clean = torch.zeros(len(windows), dtype=torch.float64)
    count = torch.zeros(len(windows), dtype=torch.long)
    device = _device(model)
    unique = list(dict.fromkeys(edits))  # the runner runs an edit listed twice once
    position = torch.tensor([unique.index(edit) for edit in edits], dtype=torch.long)
    runner = InterventionRunner(model, edits=unique, memory_budget=memory_budget)
    starts = range(0, len(windows), batch_size)
    for start in tqdm(starts, desc=description, disable=not progress or not edits, leave=False):
        stop = start + batch_size
        ids = windows.input_ids[start:stop].to(device)
        mask = windows.attention_mask[start:stop].to(device)
        effects = runner.on_batch(ids, mask)
        valid = effects.valid
        change[:, start:stop] = (effects.loss_change[position] * valid).double().sum(-1).cpu()
        clean[start:stop] = (effects.clean_loss * valid).double().sum(-1).cpu()
        count[start:stop] = valid.sum(-1).cpu()
    return EditLosses(edits, change, clean, count)


def by_document(
    values: Float[torch.Tensor, "... window"] | Int[torch.Tensor, "... window"],
    doc: Int[torch.Tensor, " window"],
) -> tuple[np.ndarray, np.ndarray]:
    """``(sums [..., document], document rows)``: ``values`` summed over each document's windows."""
    rows, inverse = torch.unique(doc, return_inverse=True)
    values = torch.as_tensor(values).detach().double()
    out = values.new_zeros(*values.shape[:-1], len(rows)).index_add(-1, inverse, values)
    return out.numpy(), rows.numpy()


def ratio_intervals(
    sums: np.ndarray,
    counts: np.ndarray,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    what: str = "the loss change",
    min_documents: int = MIN_DOCUMENTS,
) -> list[Interval]:
    """``Σ_doc sums[r] / Σ_doc counts`` for each row ``r`` of ``sums [rows, documents]``, each with a
    95% percentile document-bootstrap interval (all rows resampled with the same documents, so
    differences of rows are paired). Unavailable (NaN bounds) with fewer than ``min_documents``
    documents."""
    sums = np.atleast_2d(np.asarray(sums, dtype=np.float64))
    counts = np.asarray(counts, dtype=np.float64)

    def ratio(weights: np.ndarray) -> np.ndarray:  # [batch, docs] -> [batch, rows]
        return (weights @ sums.T) / np.maximum(weights @ counts, 1.0)[:, None]

    intervals = cluster_bootstrap(
        ratio,
        counts.shape[0],
        n_resamples=n_resamples,
        seed=seed,
        on_too_few="unavailable",
        what=what,
        min_clusters=min_documents,
    )
    return intervals if isinstance(intervals, list) else [intervals]


def held_out_windows(
    dataset: Any,
    tokenizer: Any,
    *,
    seq_len: int,
    tokens_per_group: int,
    group_column: str = "domain",
    rows: Any = None,
) -> tuple[Windows, Windows]:
    """``(selection, evaluation)`` windows: documents of halves 0 and 1 (the drivers' halves:
    :func:`~tl_moe.analysis.splits.document_split` with ``HALVES_KEY``), each group filled to
    ``tokens_per_group`` tokens."""
    rows = torch.arange(len(dataset)) if rows is None else torch.as_tensor(rows)
    half = document_split(rows, key=HALVES_KEY)
    return tuple(
        document_windows(
            dataset,
            tokenizer,
            rows[half == side].tolist(),
            seq_len=seq_len,
            tokens_per_group=tokens_per_group,
            group_column=group_column,
        )
        for side in (0, 1)
    )
