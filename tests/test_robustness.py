"""Inputs that used to hang, crash after the pass or be recorded wrong: a megabytes-long document,
an explainer whose every request failed, the provenance of a run, ``plan --dtype``; and the model-folder
checks letting every sound tiny model through."""

from __future__ import annotations

import socket

import datasets
import pytest
import torch

from explain_fixtures import word_records
from tiny_models import TINY_CONFIGS
from tl_moe.collect.batching import MAX_DOCUMENT_CHARS, iter_windows
from tl_moe.explain.explainers import Explanation
from tl_moe.explain.runner import label_experts
from tl_moe.models.folder import check_model_folder, expert_counts_in_weights
from tl_moe.network import unreachable_reason
from tl_moe.pipeline import RunOptions
from tl_moe.pipeline.results.explain import ExplainResult
from tl_moe.pipeline.runner import run_layout
from tl_moe.zoo.tokenizer import load_tokenizer


def test_a_document_of_megabytes_is_tokenized_up_to_the_documented_limit():
    tokenizer = load_tokenizer()
    words = " ".join(f"word{i % 977}" for i in range(400_000))  # ~3.5 MB on one line
    short = "a short document that stays whole"
    dataset = datasets.Dataset.from_dict({"text": [words, short], "domain": ["a", "b"]})
    windows = list(iter_windows(dataset, tokenizer, seq_len=64))
    long_doc = windows[0].document
    assert len(words) > 30 * MAX_DOCUMENT_CHARS
    assert long_doc.text == words[:MAX_DOCUMENT_CHARS]
    expected = tokenizer(words[:MAX_DOCUMENT_CHARS], add_special_tokens=False)["input_ids"]
    assert long_doc.token_ids == expected
    last = windows[-1].document
    assert last.text == short  # a document under the limit is untouched
    assert last.token_ids == tokenizer(short, add_special_tokens=False)["input_ids"]


def _failed(record):
    return Explanation(record.layer, record.expert, "", error="request failed: APIConnectionError")


def test_an_explain_run_whose_every_request_failed_reports_it_instead_of_crashing():
    labeling = label_experts(word_records(["cat", "dog", "fish"]), _failed, [], progress=False)
    result = ExplainResult(labeling=labeling, explainer="openai:http://127.0.0.1:9", main_scorer="detection")
    metrics = result.metrics()
    assert "3 of 3 experts' label requests failed" in metrics["failure"]
    assert "APIConnectionError" in metrics["failure"]
    (finding,) = result.findings()
    assert "no label was scored" in finding
    assert len(result.label_table()) == 3
    assert [table.name for table in result.tables()] == ["explain_labels", "explain_summary"]
    assert len(result.figures()) == 1  # the report renders the (empty) histograms, no crash


def test_the_endpoint_probe_tells_a_listening_port_from_a_closed_one():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert unreachable_reason(f"http://127.0.0.1:{port}/v1") is None
    assert "refused" in unreachable_reason(f"http://127.0.0.1:{port}/v1").lower()
    assert unreachable_reason("http://:80") == "no host in the address"


def test_a_single_process_run_records_its_device_dtype_and_one_rank():
    model = torch.nn.Linear(2, 2).to(torch.bfloat16)
    layout = run_layout(RunOptions(dtype="bfloat16"), model)
    assert layout["world_size"] == 1 and layout["nodes"] == 1 and layout["backend"] is None
    assert layout["ranks"] == [{"rank": 0, "local_rank": 0, "device": "cpu", "node": 0}]
    assert layout["device"] == "cpu" and layout["dtype"] == "bfloat16"


@pytest.mark.parametrize(("dtype", "bytes_per_parameter"), [("float32", 4), ("bfloat16", 2), ("float16", 2)])
def test_plan_sizes_the_weights_in_the_dtype_asked_for(dtype, bytes_per_parameter):
    from transformers import AutoConfig, AutoModelForCausalLM

    from tl_moe.pipeline.plan import plan_run

    config = AutoConfig.for_model(
        "olmoe", vocab_size=512, hidden_size=64, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, num_experts=8, num_experts_per_tok=2,
    )  # fmt: skip
    options = RunOptions(model="m", dense_baseline=None, analyses=("domains",), dtype=dtype)
    (model,) = plan_run(options, configs={"m": config}).models
    n_parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    assert model.n_parameters == n_parameters
    assert model.weight_bytes == bytes_per_parameter * n_parameters


@pytest.mark.parametrize("architecture", sorted(TINY_CONFIGS))
def test_a_sound_saved_model_of_every_tiny_architecture_passes_the_folder_checks(
    tiny_model_dir, architecture
):
    config = check_model_folder(tiny_model_dir(architecture), f"model {architecture!r}")
    assert config["model_type"] == architecture


def test_experts_are_counted_by_index_and_by_fused_shape():
    header = {
        "model.layers.0.mlp.experts.0.up_proj.weight": {"shape": [16, 32]},
        "model.layers.0.mlp.experts.5.up_proj.weight": {"shape": [16, 32]},
        "model.layers.0.mlp.shared_experts.up_proj.weight": {"shape": [16, 32]},
        "model.layers.1.mlp.experts.gate_up_proj": {"shape": [8, 32, 64]},
        "model.layers.1.mlp.experts.gate_up_proj_bias": {"shape": [8, 64]},
        "model.layers.1.mlp.gate.weight": {"shape": [8, 32]},
    }
    assert expert_counts_in_weights(header) == {"model.layers.0.mlp": 6, "model.layers.1.mlp": 8}


def test_a_csv_text_of_digits_is_text_and_a_json_number_is_refused(tmp_path):
    from tl_moe.data.corpus import load_corpus
    from tl_moe.errors import InputError

    (tmp_path / "digits.csv").write_text("text,domain\n123,a\nhello,b\n")
    texts = sorted(t for split in load_corpus(tmp_path / "digits.csv").values() for t in split["text"])
    assert texts == ["123", "hello"]
    (tmp_path / "digits.jsonl").write_text('{"text": 123, "domain": "a"}\n')
    with pytest.raises(InputError, match="digits.jsonl.*1 int"):
        load_corpus(tmp_path / "digits.jsonl")
