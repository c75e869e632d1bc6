"""Short texts written for this project, in no corpus, on which every toy model is scored.

They check that the toy models model language beyond their training documents: a Python function,
a C function, two English paragraphs and two passages of LaTeX, written here (none is copied from
a source the embedded corpus reads). ``tl-moe zoo train`` records each model's loss on them in
``metadata.json``; the tests recompute it from the shipped weights and hold every model to at most
:data:`MAX_LOSS_FRACTION_OF_UNIFORM` of the uniform guess ``ln(V)``.
"""

from __future__ import annotations

import math

import torch

MAX_LOSS_FRACTION_OF_UNIFORM = 0.65
"""Every toy model's loss on every held-out text is at most this fraction of ``ln(vocabulary size)``."""

HELD_OUT_TEXTS: dict[str, str] = {
    "code/python": '''def merge_intervals(intervals):
    """Return the union of closed intervals as a sorted list of disjoint pairs."""
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [tuple(pair) for pair in merged]
''',
    "code/c": """static size_t count_words(const char *text)
{
    size_t count = 0;
    int inside = 0;

    for (; *text != '\\0'; text++) {
        if (isspace((unsigned char)*text)) {
            inside = 0;
        } else if (!inside) {
            inside = 1;
            count++;
        }
    }
    return count;
}
""",
    "prose/commute": (
        "The morning train was late again, so she walked the last two miles along the river. The water "
        "was high after a week of rain, and the path was covered with leaves that had fallen during the "
        "night. By the time she reached the office, her shoes were wet and she had decided that, "
        "whatever her manager said, she would ask to work from home on Fridays."
    ),
    "prose/garden": (
        "My grandfather kept a small garden behind the house. Every spring he planted beans, tomatoes "
        "and a row of sunflowers that grew taller than the fence. He told us that the soil remembers "
        "how it was treated, and that a good harvest begins in the autumn before, when the ground is "
        "turned and left to rest through the winter."
    ),
    "latex/mean-value": r"""Let $f$ be continuous on $[a, b]$ and differentiable on $(a, b)$. Then there exists $c \in (a, b)$ such that
\begin{equation}
f'(c) = \frac{f(b) - f(a)}{b - a}.
\end{equation}
In particular, if $f(a) = f(b)$ then $f'(c) = 0$, and $\int_a^b f'(x)\,dx = f(b) - f(a)$.""",
    "latex/geometric": r"""For $|x| < 1$ the geometric series converges and
\[
\sum_{n=0}^{\infty} x^n = \frac{1}{1 - x}.
\]
Differentiating term by term gives $\sum_{n=1}^{\infty} n x^{n-1} = \frac{1}{(1 - x)^2}$, so the mean of a
geometric distribution with parameter $p$ is $\frac{1 - p}{p}$.""",
}
"""Held-out texts by ``kind/name``; the kind (``code``, ``prose``, ``latex``) groups them in reports."""


@torch.no_grad()
def held_out_text_losses(model, tokenizer) -> dict[str, float]:
    """Mean next-token cross-entropy (nats) of ``model`` on each held-out text.

    Each text is encoded with an end-of-text token in front (the first token is predicted from it)
    and scored in one window; the texts are shorter than the models' context.
    """
    device = next(model.parameters()).device
    losses = {}
    for name, text in HELD_OUT_TEXTS.items():
        ids = torch.tensor(
            [[tokenizer.eos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]]
        )
        logits = model(input_ids=ids.to(device)).logits[0, :-1].float()
        losses[name] = round(float(torch.nn.functional.cross_entropy(logits, ids[0, 1:].to(device))), 4)
    return losses


def loss_bound(vocab_size: int) -> float:
    """The largest loss a toy model may have on a held-out text: the fraction times ``ln(V)``."""
    return MAX_LOSS_FRACTION_OF_UNIFORM * math.log(vocab_size)
