"""The drivers' exact effects on models whose decoders pick each block's mask by its index.

Qwen3-Next alternates linear-attention layers (a padding mask) with full-attention layers (a
causal mask); GPT-OSS alternates sliding-window and full-attention layers. An edited forward
resumed from layer L must hand every block its own mask. References: per-document sums of the
loss change of removing one expert, from plain TransformerLens forwards of the whole batch with
tl_moe's removal hooks (``run_with_hooks(..., loss_per_token=True)``).
"""

from __future__ import annotations

from contextlib import contextmanager

import datasets
import pytest
import torch
from torch import nn

import tl_moe
import tl_moe.collect.interventional as interventional
from tiny_models import VOCAB, tiny_tokenizer
from tl_moe.collect import Accumulator, collect, run_interventions
from tl_moe.collect.expert_effects import ExpertEffects
from tl_moe.interventions import Intervention, remove_experts
from tl_moe.models.build import save_model
from tl_moe.models.catalog import build_tiny
from tl_moe.models.introspect import hf_model_of

SEQ_LEN = 12
BATCH = 3
N_DOCS = 8

# model type -> config changes: a linear-attention then a full-attention layer; a sliding window
# of 4 (shorter than the windows) then a full-attention layer.
MODELS = {
    "qwen3_next": {},
    "gpt_oss": {"num_local_experts": 4, "sliding_window": 4},
}


@pytest.fixture(scope="module")
def bridges(tmp_path_factory):
    built = {}

    def get(model_type: str):
        if model_type not in built:
            directory = tmp_path_factory.mktemp(f"resumed-{model_type}")
            model = build_tiny(model_type, vocab_size=VOCAB, **MODELS[model_type])
            save_model(model, tiny_tokenizer(), directory)
            built[model_type] = tl_moe.load(directory, device="cpu")
        return built[model_type]

    return get


def corpus() -> datasets.Dataset:
    """Word-level documents of varied length: long ones fill windows, short ones leave padding."""
    generator = torch.Generator().manual_seed(3)
    texts = []
    for _ in range(N_DOCS):
        length = int(torch.randint(4, 2 * SEQ_LEN, (1,), generator=generator))
        texts.append(
            " ".join(f"w{w}" for w in torch.randint(3, VOCAB, (length,), generator=generator).tolist())
        )
    return datasets.Dataset.from_dict({"text": texts, "domain": ["prose"] * N_DOCS})


class Batches(Accumulator):
    """Keeps every batch's metadata (tests only: not mergeable)."""

    def __init__(self):
        self.metas = []

    def hook_names(self, model):
        return []

    def update(self, acts, meta):
        self.metas.append(meta)

    def merge(self, other):
        raise NotImplementedError

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def finalize(self):
        return self.metas


def drivers_path(bridge):
    """The drivers' per-document removal effects of every expert, and the batches they saw."""
    cfg = bridge.moe_cfg
    effects = ExpertEffects(cfg.sparse_layers, kinds=("remove",), max_tokens=10**6)
    done = collect(
        bridge,
        corpus(),
        {"effects": effects, "batches": Batches()},
        batch_size=BATCH,
        seq_len=SEQ_LEN,
        progress=False,
    )
    return done["effects"], done["batches"]


def per_token_loss(bridge, meta, hooks):
    with torch.no_grad():
        loss = bridge.run_with_hooks(
            meta.input_ids,
            attention_mask=meta.attention_mask.long(),
            return_type="loss",
            loss_per_token=True,
            fwd_hooks=hooks,
        )
    return torch.nn.functional.pad(loss, (0, 1))


def reference_sums(bridge, metas, layer, expert):
    """Per-document Σ of the loss change of removing ``expert`` at ``layer``, from full forwards."""
    sums = torch.zeros(N_DOCS, dtype=torch.float64)
    for meta in metas:
        mask = meta.attention_mask
        valid = torch.zeros_like(mask)
        valid[:, :-1] = mask[:, :-1] & mask[:, 1:]
        change = per_token_loss(bridge, meta, remove_experts(bridge, layer, [expert]))
        change = change - per_token_loss(bridge, meta, [])
        sums.index_add_(0, meta.doc_index[valid].long(), change[valid].double())
    return sums


def assert_equals_full_forwards(bridge, result, metas):
    assert sum(int((~meta.attention_mask).sum()) for meta in metas) > 0  # padding is exercised
    assert max(int(meta.attention_mask.sum(1).max()) for meta in metas) > 4  # past the sliding window
    for li, layer in enumerate(result.layers):
        for expert in range(bridge.moe_cfg.num_experts):
            expected = reference_sums(bridge, metas, layer, expert)
            torch.testing.assert_close(result.sums[0, li, expert, :N_DOCS], expected, atol=1e-5, rtol=0)


@contextmanager
def cut_to_suffix(model, layer):
    """A planted defect: the layer list cut to blocks ``layer..`` (block L gets block 0's mask)."""
    base = hf_model_of(model).model
    layers = base.layers
    base.layers = nn.ModuleList(list(layers)[layer:])
    try:
        yield
    finally:
        base.layers = layers


@pytest.mark.parametrize("model_type", list(MODELS))
def test_drivers_removal_effects_equal_full_forwards(bridges, model_type):
    bridge = bridges(model_type)
    assert bridge.moe_cfg.sparse_layers == (0, 1)  # an edit of layer 1 resumes past a block of the other kind
    result, metas = drivers_path(bridge)
    assert result.resumed
    assert_equals_full_forwards(bridge, result, metas)


@pytest.mark.parametrize("model_type", list(MODELS))
def test_a_resumed_forward_that_differs_falls_back_to_whole_model_forwards(bridges, model_type, monkeypatch):
    bridge = bridges(model_type)
    monkeypatch.setattr(interventional, "only_blocks_from", cut_to_suffix)
    with pytest.warns(UserWarning, match="runs on the whole model"):
        result, metas = drivers_path(bridge)
    assert not result.resumed
    assert_equals_full_forwards(bridge, result, metas)


def test_the_planted_defect_is_wrong_when_resumed_and_whole_model_forwards_are_exact(bridges, monkeypatch):
    # On GPT-OSS the cut list runs (no error) but hands the full-attention layer the sliding mask.
    bridge = bridges("gpt_oss")
    _, metas = drivers_path(bridge)
    meta = next(m for m in metas if int(m.attention_mask.sum(1).max()) > 4)
    edit = Intervention("remove", 1, (0,))
    expected = per_token_loss(bridge, meta, remove_experts(bridge, 1, [0]))
    whole = run_interventions(
        bridge, meta.input_ids, [edit], attention_mask=meta.attention_mask, resume=False
    )
    assert not whole.resumed
    valid = whole.valid
    torch.testing.assert_close(whole.loss[0][valid], expected[valid], atol=1e-5, rtol=0)
    monkeypatch.setattr(interventional, "only_blocks_from", cut_to_suffix)
    wrong = run_interventions(bridge, meta.input_ids, [edit], attention_mask=meta.attention_mask, resume=True)
    assert float((wrong.loss[0][valid] - expected[valid]).abs().max()) > 1e-3


def test_the_way_the_forwards_ran_survives_checkpoints_and_merges():
    def accumulator(resumed: bool) -> ExpertEffects:
        acc = ExpertEffects((0, 1), kinds=("remove",))
        acc.resumed = resumed
        return acc

    restored = accumulator(True)
    restored.load_state_dict(accumulator(False).state_dict())
    assert not restored.resumed
    assert not accumulator(True).merge(accumulator(False)).resumed
    assert not accumulator(False).merge(accumulator(True)).resumed
    assert accumulator(True).merge(accumulator(True)).resumed


def test_the_resume_choice_is_checked(bridges):
    with pytest.raises(ValueError, match="resume must be True, False or None"):
        interventional.InterventionRunner(bridges("qwen3_next"), edits=[], resume="yes")


@pytest.mark.parametrize("resumed", [True, False])
def test_the_drivers_section_says_how_the_edited_forwards_ran(resumed):
    from test_driver_statistics import _synthetic_effects
    from tl_moe.analysis.drivers import driver_report
    from tl_moe.pipeline.sections.drivers import DriversResult

    effects, saliency = _synthetic_effects(n_docs=60)
    experts, comparison = driver_report(effects, saliency, n_drivers=2, n_resamples=50)
    result = DriversResult(experts, comparison, comparison.attrs["saliency_spearman"], resumed=resumed)
    expected = "resumed from the edited layer" if resumed else "whole model"
    assert result.metrics()["edited forwards"].startswith(expected)
    said = [finding for finding in result.findings() if "whole model" in finding]
    assert len(said) == (0 if resumed else 1)
