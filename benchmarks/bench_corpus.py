"""Cost of building the embedded corpora, cold and from the cache, and how much each domain's source costs.

Builds v1 and v2 into a fresh temporary cache (cold), loads each again (cached), and times each v2
source's documents alone; prints seconds and the ratios v2 / v1 measured in this one run. Needs the
``corpus-v2`` extra.

Usage: python benchmarks/bench_corpus.py [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from tl_moe.data.corpus import CORPUS_RECIPES, build_corpus
from tl_moe.runtime import set_threads


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache:
        cold, cached = {}, {}
        for version in ("v1", "v2"):
            cold[version], corpus = timed(lambda v=version: build_corpus(cache, version=v, progress=False))
            cached[version], _ = timed(lambda v=version: build_corpus(cache, version=v))
            characters = sum(len(text) for split in corpus.values() for text in split["text"])
            print(
                f"{version}: {characters:>11,} characters  cold build {cold[version]:6.1f} s  "
                f"cached load {cached[version]:.3f} s"
            )
        print(
            f"v2 / v1: cold build {cold['v2'] / cold['v1']:.1f}x, cached load {cached['v2'] / cached['v1']:.1f}x"
        )
    recipe = CORPUS_RECIPES["v2"]
    print("v2 sources alone (every document the source yields, before the caps):")
    for source in recipe.sources:
        seconds, count = timed(lambda s=source: sum(1 for _ in s.iter_documents(random.Random(0))))
        print(f"  {source.domain:<11} {count:>7,} documents  {seconds:6.1f} s")


if __name__ == "__main__":
    main()
