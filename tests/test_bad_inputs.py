"""Every bad input we know of, through the real CLI: exit code 2 and ONE line naming the input,
before any pass. The table in docs/BAD_INPUTS.md is generated from these runs
(`TL_MOE_WRITE_DOCS=1 python -m pytest tests/test_bad_inputs.py` rewrites it)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tl_moe.cli import main
from tl_moe.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BAD_INPUTS.md"


def _corpus_files(tmp: Path) -> dict[str, Path]:
    """Broken corpus files, by what is wrong with them."""
    folder = tmp / "corpora"
    folder.mkdir()
    contents = {
        "empty.jsonl": b"",
        "blank.jsonl": b"  \n\n   \n",
        "no_text.jsonl": b'{"body": "words", "domain": "a"}\n',
        "int_text.jsonl": b'{"text": 1, "domain": "a"}\n{"text": 2, "domain": "b"}\n',
        "mixed_text.jsonl": b'{"text": "words", "domain": "a"}\n{"text": 7, "domain": "b"}\n',
        "null_text.jsonl": b'{"text": null, "domain": "a"}\n{"text": "words", "domain": "b"}\n',
        "latin1.jsonl": b'{"text": "caf\xe9", "domain": "a"}\n',
        "bad_json.jsonl": b'{"text": "words", "domain": \n',
        "no_domain.jsonl": b'{"text": "words"}\n{"text": "more words"}\n',
        "int_domain.jsonl": b'{"text": "words", "domain": "a"}\n{"text": "more words", "domain": 3}\n',
        "float_domain.jsonl": b'{"text": "words", "domain": 1.5}\n',
        "list_domain.jsonl": b'{"text": "words", "domain": ["a", "b"]}\n',
        "dict_domain.jsonl": b'{"text": "words", "domain": {"name": "a"}}\n',
        "int_split.jsonl": b'{"text": "words", "domain": "a", "split": 0}\n{"text": "more", "domain": "b", "split": 1}\n',
    }
    paths = {}
    for name, data in contents.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    import pandas as pd

    paths["int_split.parquet"] = folder / "int_split.parquet"
    pd.DataFrame({"text": ["words", "more"], "domain": ["a", "b"], "split": [0, 1]}).to_parquet(
        paths["int_split.parquet"]
    )
    (tmp / "readme_only").mkdir()
    (tmp / "readme_only" / "README.md").write_text("about the corpus\n")
    return paths


def _model_folders(tmp: Path) -> dict[str, Path]:
    """Broken copies of the shipped toy/moe-4x2 checkpoint (with its tokenizer), by what is wrong."""
    from tl_moe.zoo.registry import checkpoint_dir
    from tl_moe.zoo.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()

    def copy(name: str, with_tokenizer: bool = True) -> Path:
        folder = tmp / "models" / name
        shutil.copytree(checkpoint_dir("toy/moe-4x2"), folder)
        if with_tokenizer:
            tokenizer.save_pretrained(folder)
        return folder

    def edit(folder: Path, **changes) -> Path:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
        return folder

    def rewrite_weights(folder: Path, change: Callable[[dict], dict]) -> Path:
        from safetensors.torch import load_file, save_file

        path = folder / "model.safetensors"
        save_file(change(load_file(path)), path, metadata={"format": "pt"})
        return folder

    def without_q_proj(weights: dict) -> dict:
        return {
            name: value for name, value in weights.items() if name != "model.layers.1.self_attn.q_proj.weight"
        }

    def with_nan(weights: dict) -> dict:
        weights["model.layers.2.mlp.gate.weight"][0, 0] = float("nan")
        return weights

    folders = {
        "truncated_config": copy("truncated_config"),
        "binary_config": copy("binary_config"),
        "num_experts": edit(copy("num_experts"), num_experts=8),
        "no_weights": copy("no_weights"),
        "truncated_weights": copy("truncated_weights"),
        "no_tokenizer": copy("no_tokenizer", with_tokenizer=False),
        "banana": edit(copy("banana"), model_type="banana"),
        "top_k_99": edit(copy("top_k_99"), num_experts_per_tok=99),
        "phimoe": edit(copy("phimoe"), model_type="phimoe", architectures=["PhimoeForCausalLM"]),
        "layers_3": edit(copy("layers_3"), num_hidden_layers=3),  # the weights hold 4 layers
        "layers_5": edit(copy("layers_5"), num_hidden_layers=5),
        "hidden_size": edit(copy("hidden_size"), hidden_size=64),  # the weights are 128 wide
        "vocab_size": edit(copy("vocab_size"), vocab_size=4000),  # the weights hold 4096 tokens
        "missing_tensor": rewrite_weights(copy("missing_tensor"), without_q_proj),
        "nan_weight": rewrite_weights(copy("nan_weight"), with_nan),
        "top_k_float": edit(copy("top_k_float"), num_experts_per_tok=1.5),
        "top_k_string": edit(copy("top_k_string"), num_experts_per_tok="2"),
        "one_position": edit(copy("one_position"), max_position_embeddings=1),
        "truncated_tokenizer": copy("truncated_tokenizer"),
        "top_k_all": edit(copy("top_k_all"), num_experts_per_tok=4),  # toy/moe-4x2 has 4 experts a layer
        "empty_vocabulary": copy("empty_vocabulary", with_tokenizer=False),
    }
    _empty_vocabulary_tokenizer().save_pretrained(folders["empty_vocabulary"])
    tokenizer_file = folders["truncated_tokenizer"] / "tokenizer.json"
    tokenizer_file.write_text(tokenizer_file.read_text()[: tokenizer_file.stat().st_size // 2])
    config = folders["truncated_config"] / "config.json"
    config.write_text(config.read_text()[:100])
    (folders["binary_config"] / "config.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    (folders["no_weights"] / "model.safetensors").unlink()
    weights = folders["truncated_weights"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folders


def _empty_vocabulary_tokenizer():
    """A byte-level BPE tokenizer whose vocabulary holds only its end-of-text token: text -> no tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(vocab={"<|endoftext|>": 0}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


def _cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(what was tried, CLI arguments, a piece the one-line message must contain)."""
    (tmp / "a_file").write_text("not a directory")
    (tmp / "empty.jsonl").write_text('{"text": "", "domain": "a"}\n{"text": "", "domain": "b"}\n')
    (tmp / "one_domain.jsonl").write_text(
        "".join(f'{{"text": "word {i} again", "domain": "only"}}\n' for i in range(40))
    )
    garbage = tmp / "garbage_out" / "checkpoints" / "toy_moe-16x2"
    garbage.mkdir(parents=True)
    (garbage / "collect-shard0-of-1.pt").write_bytes(b"\x00garbage bytes, not a checkpoint")
    corpora = _corpus_files(tmp)
    models = _model_folders(tmp)

    def corpus(name: str) -> list[str]:
        return ["analyze", "--corpus", str(corpora[name]), "--split", "train"]

    return [
        ("a model path that does not exist", ["analyze", str(tmp / "no_such_model")], "no_such_model"),
        ("an unknown toy model", ["analyze", "toy/moe-3x3"], "toy/moe-3x3"),
        ("a dense model as the analyzed MoE", ["analyze", "toy/dense"], "dense"),
        ("an MoE as the dense baseline", ["analyze", "--dense-baseline", "toy/moe-8x2"], "--dense-baseline"),
        (
            "a dense baseline that does not exist",
            ["analyze", "--dense-baseline", str(tmp / "missing")],
            "--dense-baseline",
        ),
        ("--out is a file", ["analyze", "--out", str(tmp / "a_file")], "--out"),
        ("--device banana", ["analyze", "--device", "banana"], "--device"),
        ("--device cuda on a machine without CUDA", ["analyze", "--device", "cuda"], "--device"),
        ("--seq-len longer than the model's positions", ["analyze", "--seq-len", "1024"], "--seq-len"),
        ("--seq-len far too large for memory", ["analyze", "--seq-len", "100000"], "--seq-len"),
        ("--max-tokens below the statistics floor", ["analyze", "--max-tokens", "10"], "--max-tokens"),
        ("--max-tokens that is not a number", ["analyze", "--max-tokens", "abc"], "--max-tokens"),
        ("--probe-layers that are not integers", ["analyze", "--probe-layers", "a,b"], "--probe-layers"),
        ("--probe-layers that are not sparse layers", ["analyze", "--probe-layers", "7"], "--probe-layers"),
        ("an unknown analysis", ["analyze", "--analyses", "probing,vibes"], "vibes"),
        ("--dtype float8", ["analyze", "--dtype", "float8"], "--dtype"),
        ("--threads 0", ["analyze", "--threads", "0"], "thread"),
        ("--workers 0", ["analyze", "--workers", "0"], "--workers"),
        ("an unknown embedded corpus version", ["analyze", "--corpus", "embedded:v9"], "embedded"),
        (
            "--probe-rows-per-class below --min-examples",
            ["analyze", "--probe-rows-per-class", "5"],
            "--probe-rows",
        ),
        (
            "--reweight-factors that are not numbers",
            ["analyze", "--reweight-factors", "a,b"],
            "--reweight-factors",
        ),
        (
            "a corpus whose documents are all empty",
            ["analyze", "--corpus", str(tmp / "empty.jsonl"), "--split", "train"],
            "split",
        ),
        (
            "a corpus without the requested split",
            ["analyze", "--corpus", str(tmp / "empty.jsonl")],
            "validation",
        ),
        (
            "a single-domain corpus with the domains analysis",
            [
                "analyze",
                "--corpus",
                str(tmp / "one_domain.jsonl"),
                "--split",
                "train",
                "--analyses",
                "domains",
            ],
            "domain",
        ),
        (
            "a garbage checkpoint in --out",
            ["analyze", "--analyses", "domains", "--out", str(tmp / "garbage_out")],
            "--fresh",
        ),
        ("an empty corpus file", corpus("empty.jsonl"), "empty.jsonl"),
        ("a corpus file of whitespace only", corpus("blank.jsonl"), "blank.jsonl"),
        ("a corpus file without a text column", corpus("no_text.jsonl"), "no_text.jsonl"),
        ("a corpus whose text is numbers", corpus("int_text.jsonl"), "int_text.jsonl"),
        ("a corpus whose text is mixed strings and numbers", corpus("mixed_text.jsonl"), "mixed_text.jsonl"),
        ("a corpus with a null text", corpus("null_text.jsonl"), "null_text.jsonl"),
        ("a corpus file that is not UTF-8", corpus("latin1.jsonl"), "latin1.jsonl"),
        ("a corpus file of invalid JSON", corpus("bad_json.jsonl"), "bad_json.jsonl"),
        ("a corpus without a domain column", corpus("no_domain.jsonl"), "no_domain.jsonl"),
        (
            "a corpus whose domain is an int",
            corpus("int_domain.jsonl"),
            "1 of 2 rows have a 'domain' that is not a string (1 int; first at row 1 of int_domain.jsonl: 3)",
        ),
        ("a corpus whose domain is a float", corpus("float_domain.jsonl"), "(1 float; first at row 0"),
        ("a corpus whose domain is a list", corpus("list_domain.jsonl"), "(1 list; first at row 0"),
        ("a corpus whose domain is a dict", corpus("dict_domain.jsonl"), "(1 dict; first at row 0"),
        (
            "a JSON-lines corpus whose split is a number",
            corpus("int_split.jsonl"),
            "unknown split names 0, 1 in",
        ),
        (
            "a Parquet corpus whose split is a number",
            corpus("int_split.parquet"),
            "unknown split names 0, 1 in",
        ),
        ("a corpus file that does not exist", ["analyze", "--corpus", str(tmp / "nope.jsonl")], "nope.jsonl"),
        (
            "a corpus folder with only a readme",
            ["analyze", "--corpus", str(tmp / "readme_only")],
            "readme_only",
        ),
        (
            "`tl-moe corpus stats` of a missing file",
            ["corpus", "stats", "--corpus", str(tmp / "nope.jsonl")],
            "nope.jsonl",
        ),
        ("a model folder with a truncated config.json", ["analyze", str(models["truncated_config"])], "JSON"),
        (
            "a model folder with a binary config.json",
            ["analyze", str(models["binary_config"])],
            "config.json",
        ),
        (
            "a model folder whose num_experts disagrees with its weights",
            ["analyze", str(models["num_experts"])],
            "num_experts=8",
        ),
        ("a model folder with a config but no weights", ["analyze", str(models["no_weights"])], "no weights"),
        (
            "a model folder with truncated safetensors",
            ["analyze", str(models["truncated_weights"])],
            "truncated",
        ),
        ("a model folder without tokenizer files", ["analyze", str(models["no_tokenizer"])], "tokenizer"),
        ("a model folder with model_type banana", ["analyze", str(models["banana"])], "'banana'"),
        (
            "a model folder with num_experts_per_tok 99",
            ["analyze", str(models["top_k_99"])],
            "num_experts_per_tok=99",
        ),
        (
            "an architecture TransformerLens cannot boot (phimoe)",
            ["analyze", str(models["phimoe"])],
            "tl-moe hooks --architectures",
        ),
        (
            "a model folder whose config has fewer layers than its weights",
            ["analyze", str(models["layers_3"])],
            "num_hidden_layers=3 in config.json but its weights hold 4 layers",
        ),
        (
            "a model folder whose config has more layers than its weights",
            ["analyze", str(models["layers_5"])],
            "num_hidden_layers=5 in config.json but its weights hold 4 layers",
        ),
        (
            "a model folder whose hidden_size disagrees with its weights",
            ["analyze", str(models["hidden_size"])],
            "model.embed_tokens.weight is [4096, 128] in the weights but [4096, 64]",
        ),
        (
            "a model folder whose vocab_size disagrees with its weights",
            ["analyze", str(models["vocab_size"])],
            "model.embed_tokens.weight is [4096, 128] in the weights but [4000, 128]",
        ),
        (
            "a model folder with a tensor missing from its safetensors",
            ["analyze", str(models["missing_tensor"])],
            "model.layers.1.self_attn.q_proj.weight",
        ),
        (
            "a model folder with a NaN weight",
            ["analyze", str(models["nan_weight"])],
            "model.layers.2.mlp.gate.weight holds NaN",
        ),
        (
            "a model folder with num_experts_per_tok 1.5",
            ["analyze", str(models["top_k_float"])],
            "num_experts_per_tok=1.5",
        ),
        (
            'a model folder with num_experts_per_tok "2" (a string)',
            ["analyze", str(models["top_k_string"])],
            "num_experts_per_tok='2'",
        ),
        (
            "a model folder with max_position_embeddings 1",
            ["analyze", str(models["one_position"])],
            "too short to analyze",
        ),
        (
            "a model folder with a truncated tokenizer.json",
            ["analyze", str(models["truncated_tokenizer"])],
            "tokenizer.json",
        ),
        ("a hub id while the hub cannot be reached", ["analyze", "some-org/some-moe"], "some-org/some-moe"),
        (
            "an explainer endpoint where nothing listens",
            ["analyze", "--analyses", "explain", "--explainer", "openai:http://127.0.0.1:9"],
            "http://127.0.0.1:9",
        ),
        (
            "a local explainer path that does not exist",
            ["analyze", "--analyses", "explain", "--explainer", "local:/nonexistent"],
            "local:/nonexistent",
        ),
        (
            "a local explainer path that is not a model",
            ["analyze", "--analyses", "explain", "--explainer", f"local:{tmp / 'a_file'}"],
            ".gguf",
        ),
        ("--probe-ks above the neurons of an expert", ["analyze", "--probe-ks", "1,5000"], "--probe-ks"),
        (
            "--n-token-groups above the vocabulary",
            ["analyze", "--n-token-groups", "100000", "--analyses", "specialization"],
            "accepted: 1 to 4096",
        ),
        (
            "an explicit --n-drivers above half the experts (a left default is fitted instead)",
            [
                "analyze",
                "toy/moe-4x2",
                "--dense-baseline",
                "none",
                "--analyses",
                "drivers",
                "--n-drivers",
                "9",
            ],
            "accepted: 1 to 8",
        ),
        *[
            (
                f"--analyses {analysis} on a model whose tokens use all of its experts (top-4 of 4)",
                ["analyze", str(models["top_k_all"]), "--dense-baseline", "none", "--analyses", analysis],
                "num_experts_per_tok < num_experts",
            )
            for analysis in ("drivers", "associations", "reweighting")
        ],
        (
            "a model folder whose tokenizer has no vocabulary (every text is zero tokens)",
            ["analyze", str(models["empty_vocabulary"]), "--dense-baseline", "none", "--analyses", "domains"],
            "tokenizer",
        ),
        (
            "the same tokenizer with --analyses drivers",
            ["analyze", str(models["empty_vocabulary"]), "--dense-baseline", "none", "--analyses", "drivers"],
            "0 ordinary tokens",
        ),
        ("--seed -1", ["analyze", "--seed", "-1"], "--seed"),
        ("--fdr nan", ["analyze", "--fdr", "nan"], "--fdr"),
        ("--probe-ks with 0", ["analyze", "--probe-ks", "0,4"], "--probe-ks"),
        ("--probing.ks with 0 (the namespaced spelling)", ["analyze", "--probing.ks", "0,4"], "--probe-ks"),
        ("--probing.k (an unknown key)", ["analyze", "--probing.k", "1"], "accepted: --probing.ks"),
        (
            "--plugin naming no module",
            ["--plugin", "no_such_plugin_module", "analyze"],
            "no_such_plugin_module",
        ),
        (
            "--drivers.tokens not a number",
            ["analyze", "--drivers.tokens", "many"],
            "--driver-tokens takes an integer",
        ),
        ("--reweight-factors with 1", ["analyze", "--reweight-factors", "0.5,1"], "other than 1"),
        ("--reweight-factors with a negative", ["analyze", "--reweight-factors", "-2"], "other than 1"),
        ("--reweight-factors with 0", ["analyze", "--reweight-factors", "0,2"], "other than 1"),
        ("--reweight-factors with a duplicate", ["analyze", "--reweight-factors", "2,0.5,2"], "repeats"),
        (
            "--device-map banana",
            ["analyze", "toy/moe-4x2", "--device-map", "banana"],
            "--device-map 'banana'",
        ),
        (
            "`tl-moe explain --analyses` (explain runs one analysis)",
            ["explain", "toy/moe-4x2", "--analyses", "specialization"],
            "runs only the 'explain' analysis",
        ),
        (
            "`tl-moe plan --seq-len` longer than the model's positions",
            ["plan", "toy/moe-4x2", "--seq-len", "100000"],
            "--seq-len 100000 is longer than the model's 256 positions",
        ),
        (
            "`tl-moe plan --json` in a folder that does not exist",
            ["plan", "toy/moe-4x2", "--json", str(tmp / "no_such_folder" / "plan.json")],
            "is in a folder that does not exist; accepted: a file path in an existing folder",
        ),
        ("`tl-moe hooks` of a file", ["hooks", str(tmp / "a_file")], "is a file"),
        (
            "`tl-moe plan` of a folder without config.json",
            ["plan", str(tmp / "readme_only")],
            "is a folder without config.json; accepted:",
        ),
        (
            "`tl-moe corpus stats` of a path that is no file or folder",
            ["corpus", "stats", "--corpus", "/dev/null"],
            "'/dev/null' is neither a regular file nor a folder",
        ),
    ]


def _api_cases(tmp: Path) -> list[tuple[str, Callable[[], object], str]]:
    """(what was called, the call, a piece the one-line InputError must contain); folders from :func:`_cases`."""
    import numpy as np

    import tl_moe
    from tl_moe.data.corpus import load_corpus
    from tl_moe.models.hook_names import get_act_name
    from tl_moe.models.interventions import (
        Intervention,
        ablate_expert_neurons,
        batched_hooks,
        force_routing,
        scale_expert_weights,
    )
    from tl_moe.pipeline import analyze
    from tl_moe.zoo.family import TOY_FAMILY

    cfg = TOY_FAMILY["toy/moe-4x2"]
    models = tmp / "models"
    return [
        ("`get_act_name('expert_post', True, cfg)`", lambda: get_act_name("expert_post", True, cfg), "bool"),
        ("`get_act_name('expert_post', 1.5, cfg)`", lambda: get_act_name("expert_post", 1.5, cfg), "1.5"),
        ("`get_act_name('expert_post', 'x')`", lambda: get_act_name("expert_post", "x"), "'x'"),
        ("`force_routing(cfg, 0, [0, 0])`", lambda: force_routing(cfg, 0, [0, 0]), "[0, 0]"),
        (
            "`ablate_expert_neurons(cfg, 0, 0, [0, 1], value=torch.zeros(3))`",
            lambda: ablate_expert_neurons(cfg, 0, 0, [0, 1], value=torch.zeros(3)),
            "shape [3] for 2 neurons",
        ),
        (
            "`batched_hooks(cfg, [[Intervention('remove', 0, 1), Intervention('force', 0, (1, 2))]])`",
            lambda: batched_hooks(cfg, [[Intervention("remove", 0, 1), Intervention("force", 0, (1, 2))]]),
            "both removes and forces expert(s) [1]",
        ),
        ("`tl_moe.pipeline.analyze(12345)`", lambda: analyze(12345), "12345"),
        ("`tl_moe.pipeline.analyze(None)`", lambda: analyze(None), "None"),
        ("`analyze('toy/moe-4x2', analyses=[])`", lambda: analyze("toy/moe-4x2", analyses=[]), "analyses=[]"),
        ("`analyze('toy/moe-4x2', analyses=5)`", lambda: analyze("toy/moe-4x2", analyses=5), "analyses=5"),
        ("`analyze('toy/moe-4x2', max_tokens=1.5)`", lambda: analyze("toy/moe-4x2", max_tokens=1.5), "1.5"),
        (
            "`analyze('toy/moe-4x2', max_tokens='100')`",
            lambda: analyze("toy/moe-4x2", max_tokens="100"),
            "'100'",
        ),
        ("`analyze('toy/moe-4x2', seed=-1)`", lambda: analyze("toy/moe-4x2", seed=-1), "--seed"),
        (
            "`analyze('toy/moe-4x2', fdr=float('nan'))`",
            lambda: analyze("toy/moe-4x2", fdr=float("nan")),
            "nan",
        ),
        ("`analyze('toy/moe-4x2', colour='red')`", lambda: analyze("toy/moe-4x2", colour="red"), "'colour'"),
        (
            "`analyze('toy/moe-4x2', probing=dict(kss=(1, 8)))`",
            lambda: analyze("toy/moe-4x2", probing=dict(kss=(1, 8))),
            "probing has no setting 'kss'; accepted: ks,",
        ),
        (
            "`analyze('toy/moe-4x2', drivers=dict(count=0))`",
            lambda: analyze("toy/moe-4x2", drivers=dict(count=0)),
            "--drivers.count (--n-drivers) must be a positive integer",
        ),
        ("`load_corpus(12345)`", lambda: load_corpus(12345), "int"),
        (
            "`tl_moe.pipeline.analyze('toy/moe-4x2', split=0)`",
            lambda: analyze("toy/moe-4x2", split=0, analyses=["sparsity"]),
            "--split 0 is not a split",
        ),
        (
            "`tl_moe.pipeline.analyze('toy/moe-4x2', split=numpy.int64(0))`",
            lambda: analyze("toy/moe-4x2", split=np.int64(0), analyses=["sparsity"]),
            "--split 0 is not a split",
        ),
        (
            "`tl_moe.load(folder without tokenizer files)`",
            lambda: tl_moe.load(models / "no_tokenizer"),
            "tokenizer",
        ),
        (
            "`tl_moe.load(folder with truncated safetensors)`",
            lambda: tl_moe.load(models / "truncated_weights"),
            "truncated",
        ),
        ("`tl_moe.load(phimoe folder)`", lambda: tl_moe.load(models / "phimoe"), "phimoe"),
        (
            "`tl_moe.load(folder whose config has 3 layers, weights 4)`",
            lambda: tl_moe.load(models / "layers_3"),
            "num_hidden_layers=3",
        ),
        (
            "`tl_moe.load(folder with a NaN weight)`",
            lambda: tl_moe.load(models / "nan_weight"),
            "model.layers.2.mlp.gate.weight holds NaN",
        ),
        (
            "`analyze('toy/moe-4x2', threads=0)` (the rule of `--threads`)",
            lambda: analyze("toy/moe-4x2", threads=0),
            "--threads 0",
        ),
        (
            "`analyze('toy/moe-4x2', device_map='banana')`",
            lambda: analyze("toy/moe-4x2", device_map="banana"),
            "--device-map 'banana'",
        ),
        ("`tl_moe.load(a file)`", lambda: tl_moe.load(tmp / "a_file"), "is a file"),
        (
            "`scale_expert_weights(cfg, 0, [1], 1e38)`",
            lambda: scale_expert_weights(cfg, 0, [1], 1e38),
            "(MAX_FACTOR)",
        ),
        (
            "a hook on `blocks.0.mlp.hook_router_probs` returning `x[..., :2]` (4 experts)",
            lambda: _run_with_hook("blocks.0.mlp.hook_router_probs", lambda x, hook: x[..., :2]),
            "returned a tensor of shape [1, 6, 2]; accepted: a tensor of the shape it received, [1, 6, 4]",
        ),
        (
            "a hook on `blocks.0.mlp.hook_topk_indices` returning expert 7 (4 experts)",
            lambda: _run_with_hook("blocks.0.mlp.hook_topk_indices", lambda x, hook: torch.full_like(x, 7)),
            "from 7 to 7 for 4 experts",
        ),
        (
            "a hook on `blocks.0.mlp.hook_topk_indices` routing both slots to expert 0",
            lambda: _run_with_hook("blocks.0.mlp.hook_topk_indices", lambda x, hook: torch.zeros_like(x)),
            "repeat an expert within a token",
        ),
        (
            "`tl_moe.load('some-org/some-moe')`, hub unreachable",
            lambda: tl_moe.load("some-org/some-moe"),
            "hub",
        ),
    ]


def _run_with_hook(name: str, hook: Callable) -> object:
    """toy/moe-4x2's forward on six tokens with ``hook`` at ``name``."""
    import tl_moe

    model = tl_moe.load("toy/moe-4x2")
    with torch.no_grad():
        return model.run_with_hooks(torch.arange(1, 7)[None], fwd_hooks=[(name, hook)])


def _api_message(call: Callable[[], object]) -> tuple[str, str]:
    """The class and message of the error ``call`` raises (``"none"`` if it returns)."""
    try:
        call()
    except Exception as error:  # the test checks which class it is
        return type(error).__name__ if isinstance(error, InputError) else f"not InputError: {error!r}", str(
            error
        )
    return "none", ""


def _message(arguments: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    err = capsys.readouterr().err
    # transformers' weight-loading progress bar is progress, not a message: drop its lines
    lines = [
        line
        for line in err.replace("\r", "\n").splitlines()
        if line.strip() and "Loading weights" not in line
    ]
    return exit_info.value.code, "\n".join(lines)


def test_every_bad_input_gets_one_line_and_the_table_is_current(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TL_MOE_THREADS", "1")
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a hub that cannot be reached
    rows = ["| input | `tl-moe` prints (exit code 2) |", "|---|---|"]
    failures = []
    for what, arguments, expected in _cases(tmp_path):
        code, message = _message(arguments, capsys)
        lines = message.splitlines()
        if (
            code != 2
            or len(lines) != 1
            or "Traceback" in message
            or expected not in message
            or not message.startswith("tl-moe: error: ")
        ):
            failures.append(f"{what}: exit {code}: {message[-400:]!r}")
            continue
        shown = lines[0].removeprefix("tl-moe: error: ").replace(str(tmp_path), "TMP").replace("|", "\\|")
        rows.append(f"| {what} | {shown} |")
    api_rows = ["| call | raises `InputError` (a `ValueError`) with the message |", "|---|---|"]
    for what, call, expected in _api_cases(tmp_path):
        kind, message = _api_message(call)
        if kind.startswith(("not", "none")) or "\n" in message or expected not in message:
            failures.append(f"{what}: {kind}: {message[-400:]!r}")
            continue
        shown = message.replace(str(tmp_path), "TMP").replace("|", "\\|")
        api_rows.append(f"| {what} | {shown} |")
    assert not failures, "\n".join(failures)
    table = "\n".join(rows)
    text = (
        "# Bad inputs and what `tl-moe analyze` says\n\n"
        "<!-- Generated by tests/test_bad_inputs.py (TL_MOE_WRITE_DOCS=1 rewrites it); edit the test, not this file. -->\n\n"
        "Each input below was run through the command line by the test suite. Every one exits with code 2\n"
        "and one line naming the input and what is accepted, before any pass over the corpus starts\n"
        "(`TMP` stands for the test's temporary folder).\n\n" + table + "\n\n"
        "## Through the Python API\n\n"
        "The same inputs given to the library raise `tl_moe.errors.InputError` (a `ValueError`) with a\n"
        "one-line message (`cfg` is the `MoEConfig` of toy/moe-4x2; the folders are those above).\n\n"
        + "\n".join(api_rows)
        + "\n"
    )
    if os.environ.get("TL_MOE_WRITE_DOCS"):
        DOC.write_text(text)
    assert DOC.read_text() == text, "docs/BAD_INPUTS.md is stale: rerun with TL_MOE_WRITE_DOCS=1"


@pytest.mark.parametrize(
    ("name", "content", "text"),
    [
        ("bom.jsonl", '{"text": "first words", "domain": "a"}\n', "first words"),
        ("bom.csv", "text,domain\nfirst words,a\n", "first words"),
        ("bom.txt", "first words", "first words"),
    ],
)
def test_a_byte_order_mark_is_dropped_not_refused(tmp_path, name, content, text):
    """Editors on Windows start UTF-8 files with U+FEFF: the file is read, and the mark is not part of the
    text (nor of a CSV's first column name)."""
    from tl_moe.data.corpus import load_corpus

    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + content.encode("utf-8"))
    corpus = load_corpus(path)
    texts = [row for split in corpus.values() for row in split["text"]]
    assert texts == [text]
    if name != "bom.txt":
        assert [row for split in corpus.values() for row in split["domain"]] == ["a"]


def test_a_null_domain_is_unknown_and_a_string_domain_is_kept(tmp_path):
    """Beside the refused non-string domains (the table above): null and empty mean 'unknown', as a
    missing domain always has."""
    from tl_moe.data.corpus import load_corpus

    path = tmp_path / "domains.jsonl"
    rows = [
        {"text": "one", "domain": None},
        {"text": "two", "domain": ""},
        {"text": "three", "domain": "code"},
    ]
    path.write_text("".join(json.dumps({**row, "split": "train"}) + "\n" for row in rows))
    assert load_corpus(path)["train"]["domain"] == ["unknown", "unknown", "code"]


def test_device_map_and_threads_take_what_accelerate_and_the_command_line_take():
    """Accepted placements and thread counts pass; refused ones raise the one line the CLI prints, and
    RunOptions refuses exactly the thread counts ``set_threads`` (the CLI's path) refuses."""
    from tl_moe.pipeline import RunOptions
    from tl_moe.runtime import ThreadsError, resolve_threads

    for accepted in ("auto", "balanced", "balanced_low_0", "sequential", "cpu", "cuda:1", 0, {"": "cpu"}):
        assert RunOptions(device_map=accepted).device_map == accepted
    for refused in ("banana", "", -1, True, 1.5, ["cpu"]):
        with pytest.raises(InputError, match=r"^--device-map .* is not a placement; accepted: 'auto'"):
            RunOptions(device_map=refused)
    for accepted in (None, 1, 3, "auto"):
        assert RunOptions(threads=accepted).threads == accepted
    for refused in (0, -2, True, 1.5, "x"):
        with pytest.raises(ThreadsError) as from_options:
            RunOptions(threads=refused)
        with pytest.raises(ThreadsError) as from_runtime:
            resolve_threads(refused)
        assert str(from_options.value) == str(from_runtime.value)
