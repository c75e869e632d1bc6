"""The pipeline: an analysis registered from outside the package, one pass per model, one layer axis."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Any

import datasets
import pandas as pd
import pytest
import torch

import tl_moe
from tiny_models import VOCAB
from tl_moe.collect import Accumulator
from tl_moe.errors import InputError
from tl_moe.pipeline import (
    AccumulatorSpec,
    Analysis,
    Inputs,
    Need,
    Result,
    RunContext,
    RunOptions,
    TableItem,
    register,
    run,
    unregister,
)
from tl_moe.pipeline.needs import RoutedByDomain


@pytest.fixture(scope="module")
def word_corpus():
    generator = torch.Generator().manual_seed(0)
    texts, domains = [], []
    for doc in range(60):
        length = int(torch.randint(20, 60, (1,), generator=generator))
        offset = 3 + 30 * (doc % 3)  # each domain uses its own words, so routing differs by domain
        words = torch.randint(offset, offset + 30, (length,), generator=generator).tolist()
        texts.append(" ".join(f"w{w}" for w in words))
        domains.append(["alpha", "beta", "gamma"][doc % 3])
    return datasets.Dataset.from_dict({"text": texts, "domain": domains})


class FirstSlotCounts(Accumulator):
    """Counts how often each expert of one layer is the first choice (a user's own accumulator)."""

    def __init__(self, layer: int, n_experts: int) -> None:
        self.layer, self.n_experts = layer, n_experts
        self.counts = torch.zeros(n_experts, dtype=torch.long)

    def hook_names(self, model: Any) -> list[str]:
        return [tl_moe.get_act_name("topk_indices", self.layer)]

    def update(self, acts, meta) -> None:
        first = meta.tokens(acts[tl_moe.get_act_name("topk_indices", self.layer)])[:, 0]
        not_bos = meta.tokens(meta.doc_position) >= 0
        self.counts = self.counts + torch.bincount(first[not_bos].long().cpu(), minlength=self.n_experts)

    def merge(self, other):
        self._check_mergeable(other)
        self.counts = self.counts + other.counts
        return self

    def state_dict(self):
        return {"counts": self.counts}

    def load_state_dict(self, state):
        self.counts = state["counts"]

    def finalize(self):
        return self.counts.clone()

    def config(self):
        return {"layer": self.layer}


@dataclass(frozen=True)
class FirstSlotSpec(AccumulatorSpec):
    layer: int

    def build(self, model, run: RunContext) -> Accumulator:
        return FirstSlotCounts(self.layer, model.moe_cfg.num_experts)


@dataclass(frozen=True)
class FirstSlotResult(Result):
    counts: torch.Tensor
    routed_total: int

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"expert": range(len(self.counts)), "first_choice": self.counts.tolist()})

    def metrics(self):
        return {"first-choice tokens": int(self.counts.sum()), "routed slots": self.routed_total}

    def tables(self):
        return [TableItem("first_slot_counts", self.to_frame(), "First-choice counts per expert.")]


class FirstSlot(Analysis):
    name = "first_slot"
    title = "First-choice experts"
    summary = "how often each expert of the last sparse layer is a token's first choice"
    default = False

    def needs(self, run):
        layer = run.config(run.main).sparse_layers[-1]
        return [Need(run.main, FirstSlotSpec(layer)), Need(run.main, RoutedByDomain())]

    def finalize(self, run, inputs: Inputs):
        layer = run.config(run.main).sparse_layers[-1]
        routed = inputs[Need(run.main, RoutedByDomain())]  # shared with the domains analysis
        return FirstSlotResult(inputs[Need(run.main, FirstSlotSpec(layer))], int(routed[-1].sum()))


@pytest.fixture
def first_slot():
    register(FirstSlot)
    yield FirstSlot
    unregister(FirstSlot.name)


def _options(tmp_path, model_dir, **changes) -> RunOptions:
    settings = dict(
        model=str(model_dir),
        dense_baseline=None,
        out=tmp_path,
        max_tokens=1000,
        seq_len=16,
        batch_size=4,
        n_token_groups=4,
        progress=False,
    )
    return RunOptions(**{**settings, **changes})


def test_an_analysis_registered_from_outside_runs_in_the_same_pass_and_is_reported(
    first_slot, tiny_model_dir, tiny_bridge, word_corpus, tmp_path, monkeypatch
):
    from tl_moe.pipeline import runner as run_module

    passes = []
    real_collect = run_module.collect
    monkeypatch.setattr(
        run_module, "collect", lambda model, *a, **kw: passes.append(model) or real_collect(model, *a, **kw)
    )
    model_dir = tiny_model_dir("olmoe")
    options = _options(tmp_path, model_dir, analyses=("domains", "first_slot"))
    results = run(options, dataset=word_corpus, models={str(model_dir): tiny_bridge("olmoe")})
    assert len(passes) == 1  # both analyses, and the shared RoutedByDomain, in one pass
    counts = results["first_slot"].counts
    cfg = tiny_bridge("olmoe").moe_cfg
    assert int(counts.sum()) * cfg.experts_per_token == results["first_slot"].routed_total
    assert int(counts.sum()) == sum(results.tokens_by_domain.values())
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["sections"]["first_slot"]["metrics"]["first-choice tokens"] == int(counts.sum())
    cpu = saved["metadata"]["cpu_seconds"]
    assert set(cpu) == {"passes", "finalize"} and cpu["passes"] > 0 and cpu["finalize"] >= 0
    assert "First-choice experts" in (tmp_path / "index.html").read_text()
    assert (tmp_path / "tables" / "first_slot_counts.csv").exists()


def test_every_layer_axis_is_the_block_index(tiny_model_dir, tiny_bridge, word_corpus, tmp_path):
    """deepseek_v2's tiny model has a dense block 0 and its only sparse block at 1."""
    model_dir = tiny_model_dir("deepseek_v2")
    bridge = tiny_bridge("deepseek_v2")
    assert bridge.moe_cfg.sparse_layers == (1,)
    options = _options(tmp_path, model_dir, analyses=("domains", "specialization", "logit_lens"))
    results = run(options, dataset=word_corpus, models={str(model_dir): bridge})
    assert set(results["domains"].to_frame()["layer"]) == {1}
    assert set(results["specialization"].to_frame()["layer"]) == {1}
    assert set(results["specialization"].experts_frame()["layer"]) == {1}
    assert set(results["logit_lens"].to_frame()["layer"]) == {1}
    assert results["domains"].shown_layers == (1,)
    assert (tmp_path / "figures" / "domain_share_layer1.png").exists()


def _domains_in_a_notebook(model, corpus):
    """The domains analysis through the notebook entry point, on a small budget, writing nothing."""
    return tl_moe.pipeline.analyze(
        model,
        analyses=["domains"],
        dataset=corpus,
        max_tokens=1000,
        seq_len=16,
        n_token_groups=4,
        progress=False,
    )


def test_notebook_entry_point_runs_on_a_loaded_model_without_writing(
    tiny_bridge, word_corpus, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    results = _domains_in_a_notebook(tiny_bridge("olmoe"), word_corpus)
    assert results.report is None and not any(tmp_path.iterdir())
    cfg = tiny_bridge("olmoe").moe_cfg  # every token is routed to k experts in every sparse layer
    expected = len(cfg.sparse_layers) * cfg.experts_per_token * sum(results.tokens_by_domain.values())
    assert results["domains"].to_frame()["n_tokens"].sum() == expected


def test_dependencies_are_added_and_ordered():
    from tl_moe.pipeline.registry import resolve

    assert [a.name for a in resolve(("sparsity",))] == ["probing", "sparsity"]
    assert [a.name for a in resolve(("logit_lens", "probing"))] == ["probing", "logit_lens"]
    with pytest.raises(InputError, match="Unknown analysis 'vibes'"):
        resolve(("vibes",))


def test_registering_a_different_class_under_a_taken_name_is_refused():
    class Impostor(Analysis):
        name = "probing"
        title = "x"
        summary = "x"

        def needs(self, run):
            return []

        def finalize(self, run, inputs):
            return None

    with pytest.raises(ValueError, match="already registered"):
        register(Impostor)


def test_dtype_and_device_map_options_are_checked_before_any_pass(tmp_path):
    with pytest.raises(InputError, match="--dtype must be one of float32, bfloat16, float16"):
        run(RunOptions(out=tmp_path, dtype="float8"))
    with pytest.raises(InputError, match="--device or --device-map"):
        run(RunOptions(out=tmp_path, device="cpu", device_map="auto"))


def test_a_bfloat16_run_through_accelerate_device_map(tiny_model_dir, word_corpus, tmp_path):
    model_dir = tiny_model_dir("olmoe")
    options = _options(tmp_path, model_dir, analyses=("domains",), dtype="bfloat16", device_map="cpu")
    results = run(options, dataset=word_corpus)
    frame = results["domains"].to_frame()
    assert frame["n_tokens"].sum() > 0
    assert len(frame) == 2 * 8  # every expert of both sparse layers scored or flagged


def test_results_show_their_first_figure_in_a_notebook_and_captions_name_blank_experts(
    tiny_bridge, word_corpus, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    results = _domains_in_a_notebook(tiny_bridge("olmoe"), word_corpus)
    png = results["domains"]._repr_png_()
    assert png.startswith(b"\x89PNG")
    domains = results["domains"]
    small = domains.experts.insufficient_tokens_
    for item, layer in zip(domains.figures(), domains.shown_layers, strict=True):
        row = domains.experts.layers_.index(layer)
        assert ("Blank columns" in item.caption) == bool(small[row].any())


def test_the_heatmap_caption_names_the_experts_too_small_to_score():
    import pandas as pd

    from tl_moe.analysis.domain_experts import DomainExperts
    from tl_moe.pipeline.sections.domains import DomainExpertsResult

    counts = torch.tensor([[[40.0, 40.0], [3.0, 1.0], [60.0, 10.0]]])  # block 5: expert 1 has 4 tokens
    experts = DomainExperts(min_tokens=10).fit(counts, torch.tensor([100.0, 100.0]), ["a", "b"], layers=(5,))
    result = DomainExpertsResult(experts=experts, top=pd.DataFrame(), shown_layers=(5,))
    caption = result.figures()[0].caption
    assert "fewer than 10 routed tokens" in caption and "1 (4 tokens)" in caption and "0 (" not in caption


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_dense_baseline_and_the_untrained_null_load_in_the_runs_dtype(tiny_model_dir, tmp_path, dtype):
    """OLMo's rotary embedding returns float32 cos/sin: its half-precision bridge must still run."""
    from transformers import AutoModelForCausalLM

    from tl_moe.pipeline.context import RunContext, untrained_name

    moe_dir, dense_dir = str(tiny_model_dir("olmoe")), str(tiny_model_dir("olmo"))
    context = RunContext(_options(tmp_path, moe_dir, dense_baseline=dense_dir, dtype=dtype, device="cpu"))
    toks = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    reference = AutoModelForCausalLM.from_pretrained(
        dense_dir, dtype=getattr(torch, dtype), attn_implementation="eager"
    )
    reference = reference.eval()
    with torch.no_grad():
        want = reference(toks).logits
    for name in (dense_dir, untrained_name(moe_dir)):
        model = context.model(name)
        assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}, name
        with torch.no_grad():
            logits = model(toks)
        assert logits.dtype == getattr(torch, dtype)
        if name == dense_dir:  # Hugging Face rotates in float32 and casts back: the same numbers
            assert torch.equal(logits, want)


def test_probing_without_enough_concept_tokens_is_reported_unavailable_and_the_rest_completes(
    tiny_model_dir, tmp_path
):
    """Two short word documents: no concept has 50 positive tokens, so probing (and sparsity, built on it)
    say so in their sections while the domains analysis completes; the small corpus is warned about first."""
    from tl_moe.pipeline.protocol import UnavailableResult

    corpus = datasets.Dataset.from_dict({"text": ["w5 w6 w7 w8 w9", "w3 w4 w5"], "domain": ["a", "b"]})
    options = _options(tmp_path, tiny_model_dir("olmoe"), analyses=("domains", "probing", "sparsity"))
    with pytest.warns(
        UserWarning, match="holds 8 tokens \\(2 documents\\), far fewer than --max-tokens 1000"
    ):
        results = run(options, dataset=corpus)
    probing, sparsity = results["probing"], results["sparsity"]
    assert isinstance(probing, UnavailableResult) and "No concept has 50 positive tokens" in probing.reason
    assert (
        isinstance(sparsity, UnavailableResult)
        and "probing analysis, which is unavailable" in sparsity.reason
    )
    assert results["domains"].to_frame()["n_tokens"].sum() > 0
    sections = json.loads((tmp_path / "results.json").read_text())["sections"]
    assert sections["probing"]["metrics"] == {"unavailable": probing.reason}
    assert (
        "unavailable" in sections["sparsity"]["metrics"] and "n_tokens" not in sections["probing"]["metrics"]
    )


def test_a_corpus_that_fills_the_budget_is_not_warned_about(tiny_bridge):
    from tl_moe.pipeline.validation import warn_small_corpus

    corpus = datasets.Dataset.from_dict({"text": ["w5 w6 w7 w8"] * 30})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_small_corpus(corpus, tiny_bridge("olmoe").tokenizer, max_tokens=200, split="train")  # 120 >= 100
    with pytest.warns(UserWarning, match="holds 120 tokens"):
        warn_small_corpus(corpus, tiny_bridge("olmoe").tokenizer, max_tokens=242, split="train")  # 120 < 121


def test_each_further_untrained_initialization_is_the_same_config_with_the_runs_seed_plus_its_number(
    tiny_model_dir, tmp_path
):
    """``untrained:initK:NAME`` is NAME's config randomly initialised with the run's seed + K (its own
    draw), ``untrained:NAME`` with the run's seed; the names parse back to their model and number."""
    from transformers import AutoConfig

    from tl_moe.models.build import build_model_from_config
    from tl_moe.pipeline.context import RunContext, untrained_base, untrained_name

    moe_dir = str(tiny_model_dir("olmoe"))
    context = RunContext(_options(tmp_path, moe_dir, device="cpu", dtype="float32", seed=3))
    assert untrained_name(moe_dir, 2) == f"untrained:init2:{moe_dir}"
    assert untrained_base(untrained_name(moe_dir, 2)) == (moe_dir, 2)
    assert untrained_base(untrained_name(moe_dir)) == (moe_dir, 0)
    config = AutoConfig.from_pretrained(moe_dir)
    embeddings = []
    for init in (0, 2):
        want = build_model_from_config(config, seed=3 + init).get_input_embeddings().weight.detach()
        got = context.model(untrained_name(moe_dir, init)).original_model.get_input_embeddings().weight
        torch.testing.assert_close(got.detach(), want)
        embeddings.append(want)
    assert not torch.equal(*embeddings)
