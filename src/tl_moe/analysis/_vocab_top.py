"""The ``n`` largest logits of every row over a whole vocabulary, as ``torch.topk`` gives them, faster.

``logits.topk(n, dim=-1)`` on a CPU copies every ``(value, index)`` pair of a row before it selects,
which costs a third or more of the vocabulary product itself for a narrow ``d_model``. :func:`vocab_topk` screens
instead: each row is cut into blocks of :data:`BLOCK` logits, the block maxima (one vectorised reduction)
name the ``n`` blocks that can hold the row's top ``n``, and only those blocks' logits (and the tail past
the last whole block) are ranked.

Exact, not approximate. Let ``c_1 > ... > c_n`` be the top ``n`` of the candidates, ``c_{n+1}`` the next
candidate and ``b`` the largest maximum of a block left out. Every logit left out is ``<= b``, so when the
candidate values are strictly decreasing and ``c_n > max(c_{n+1}, b)``, the candidates' top ``n`` is the
row's, every value distinct: the one answer ``topk`` can give. A row that misses this (tied logits, a NaN)
is ranked by ``topk`` on its whole row, so ties are broken exactly as ``topk`` breaks them (a CPU ``topk``
ranks every row on its own, whatever the other rows). On other devices ``topk`` itself runs: it is fast
there, and its order of tied logits may depend on the shape of the call.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int

__all__ = ["BLOCK", "vocab_topk"]

#: Logits per screening block (a row's top ``n`` lies in its ``n`` blocks with the largest maxima).
BLOCK = 64


def vocab_topk(
    logits: Float[torch.Tensor, "rows vocab"], n: int
) -> tuple[Float[torch.Tensor, "rows n"], Int[torch.Tensor, "rows n"]]:
    """``logits.topk(n, dim=-1)`` (values and indices, largest first), equal to it value for value."""
    rows, vocab = logits.shape
    n_blocks = vocab // BLOCK
    screened = logits.dtype in _SCREENED and logits.device.type == "cpu"
    if rows == 0 or n < 1 or n_blocks < 2 * (n + 1) or not screened:
        return _topk(logits, n)
    logits = logits.contiguous()
    block_max = logits[:, : n_blocks * BLOCK].view(rows, n_blocks, BLOCK).amax(-1)  # [rows, block]
    blocks = block_max.topk(n + 1, dim=-1)
    offsets = torch.arange(BLOCK, device=logits.device)
    ids = (blocks.indices[:, :n, None] * BLOCK + offsets).reshape(rows, n * BLOCK)
    tail = torch.arange(n_blocks * BLOCK, vocab, device=logits.device)
    ids = torch.cat([ids, tail.expand(rows, -1)], dim=1)  # [rows, candidate]
    best = logits.gather(1, ids).topk(n + 1, dim=-1)
    values, indices = best.values[:, :n], ids.gather(1, best.indices[:, :n])
    cut = torch.maximum(best.values[:, n], blocks.values[:, n])
    exact = (values[:, -1] > cut) & (values[:, :-1] > values[:, 1:]).all(-1)
    if not bool(exact.all()):
        redo = (~exact).nonzero()[:, 0]
        again = _topk(logits[redo], n)
        values, indices = values.clone(), indices.clone()
        values[redo], indices[redo] = again
    return values, indices


# Float dtypes whose comparisons the screen relies on (every floating dtype torch ranks).
_SCREENED = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _topk(logits: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    top = logits.topk(n, dim=-1)
    return top.values, top.indices
