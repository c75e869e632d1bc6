"""The corpus logit lens of every expert, with its controlled finding, as one configured object.

:class:`LogitLensStudy` lists each expert's top mean-lens tokens over the corpus (what an
:class:`~tl_moe.analysis.logit_lens_accumulator.ExpertLogitLensAccumulator` gathered) and measures the
token most experts rank first against the untrained model of the same config, when it is given, with
document-bootstrap intervals on the held-out side of the document split
(:func:`~tl_moe.analysis.logit_lens_null.top_token_share`).

Usage, on the lenses a collection pass gave::

    study = LogitLensStudy(Statistics(seed=1))
    outcome = study(
        lens, LogitReadout.from_model(model).vocab_logits, model.tokenizer,
        untrained=untrained_lens, untrained_logits=LogitReadout.from_model(untrained_model).vocab_logits,
    )
    outcome.top_tokens, outcome.share.difference
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tl_moe.analysis.configs import Statistics
from tl_moe.analysis.logit_lens_accumulator import ExpertLogitLensResult
from tl_moe.analysis.logit_lens_null import LensLogits, TopTokenShare, top_token_share
from tl_moe.errors import InputError

__all__ = ["LogitLensOutcome", "LogitLensStudy"]


@dataclass(frozen=True)
class LogitLensOutcome:
    """Each expert's top mean-lens tokens over the corpus, and the share of experts ranking one token first.

    Attributes:
        lens: the accumulated lens (top-n counts, DLA on the next token, top mean-lens tokens).
        top_tokens: long table: layer, expert, rank, token id, token text, mean logit.
        share: the most common top-1 token's share of experts, trained against untrained (``None`` when
            no expert was routed a token).
        token_text: the text of that token.
    """

    lens: ExpertLogitLensResult
    top_tokens: pd.DataFrame
    share: TopTokenShare | None = None
    token_text: str | None = None


def _cpu_lens(vocab_logits: LensLogits) -> LensLogits:
    """The readout's lens on CPU outputs (the per-document sums live on the CPU)."""
    return lambda x: vocab_logits(x).cpu()


@dataclass(frozen=True)
class LogitLensStudy:
    """The corpus logit lens of every expert and its controlled top-1 share (see the module docstring).

    Args:
        statistics: the seed and the selection fraction of the document split, the bootstrap
            resamples behind each interval and the fewest test documents an interval needs.
    """

    statistics: Statistics = field(default_factory=Statistics)

    def __call__(
        self,
        lens: ExpertLogitLensResult,
        vocab_logits: LensLogits,
        tokenizer: Any,
        *,
        untrained: ExpertLogitLensResult | None = None,
        untrained_logits: LensLogits | None = None,
    ) -> LogitLensOutcome:
        """The top tokens of every expert and, when any expert was routed a token, the top-1 share.

        Args:
            lens: the trained model's accumulated lens.
            vocab_logits: maps ``[..., d_model]`` expert outputs to their raw-lens logits (e.g.
                :attr:`~tl_moe.analysis.readout.LogitReadout.vocab_logits`).
            tokenizer: decodes token ids.
            untrained: the untrained model's lens, fed the same documents (the null).
            untrained_logits: its raw lens.
        """
        if untrained is not None and untrained_logits is None:
            raise InputError(
                "LogitLensStudy was given the untrained lens without untrained_logits; accepted: both "
                "(the untrained model's readout, e.g. LogitReadout.from_model(untrained).vocab_logits) or neither."
            )
        top_tokens = lens.top_tokens(tokenizer)
        if not (lens.n_routed > 0).any():
            return LogitLensOutcome(lens=lens, top_tokens=top_tokens)
        stats = self.statistics
        share = top_token_share(
            lens,
            _cpu_lens(vocab_logits),
            untrained,
            None if untrained_logits is None else _cpu_lens(untrained_logits),
            n_resamples=stats.bootstrap_resamples,
            seed=stats.seed,
            selection_fraction=stats.selection_fraction,
            split_seed=stats.seed,
            min_documents=stats.min_documents,
        )
        return LogitLensOutcome(
            lens=lens, top_tokens=top_tokens, share=share, token_text=tokenizer.decode([share.token])
        )
