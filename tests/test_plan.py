"""The planner: parameter counts of the published flagship shapes (meta device, offline), memory
estimates that match what a run really stores, and one-line refusals of runs that cannot fit."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

import tl_moe.pipeline  # noqa: F401 (registers the analyses)
from tl_moe.errors import InputError
from tl_moe.pipeline import RunOptions
from tl_moe.pipeline.plan import check_fits, plan_run

# Published shapes (model cards): total / active parameters in billions.
FLAGSHIPS = {
    "OLMoE-1B-7B": (
        dict(
            model_type="olmoe",
            vocab_size=50304,
            hidden_size=2048,
            intermediate_size=1024,
            num_hidden_layers=16,
            num_attention_heads=16,
            num_key_value_heads=16,
            num_experts=64,
            num_experts_per_tok=8,
            tie_word_embeddings=False,
        ),
        6.9,
        1.3,
    ),
    "Qwen3-30B-A3B": (
        dict(
            model_type="qwen3_moe",
            vocab_size=151936,
            hidden_size=2048,
            num_hidden_layers=48,
            num_attention_heads=32,
            num_key_value_heads=4,
            head_dim=128,
            moe_intermediate_size=768,
            num_experts=128,
            num_experts_per_tok=8,
            intermediate_size=6144,
            tie_word_embeddings=False,
        ),
        30.5,
        3.3,
    ),
    "DeepSeek-V3": (dict(model_type="deepseek_v3"), 671.0, 37.0),  # transformers' default config
}


def _config(settings: dict):
    settings = dict(settings)
    return AutoConfig.for_model(settings.pop("model_type"), **settings)


@pytest.mark.parametrize("name", list(FLAGSHIPS))
def test_planned_parameters_match_the_published_sizes(name):
    settings, total, active = FLAGSHIPS[name]
    plan = plan_run(
        RunOptions(model=name, dense_baseline=None, analyses=("domains",)), configs={name: _config(settings)}
    )
    model = plan.models[0]
    assert model.n_parameters / 1e9 == pytest.approx(total, rel=0.02)
    assert model.n_active_parameters / 1e9 == pytest.approx(active, rel=0.05)
    assert model.weight_bytes == 4 * model.n_parameters


def test_olmoe_probing_store_is_sixteen_kilobytes_per_token_and_layer():
    settings, _, _ = FLAGSHIPS["OLMoE-1B-7B"]
    options = RunOptions(model="olmoe", dense_baseline=None, analyses=("probing",), max_tokens=10_000)
    plan = plan_run(options, configs={"olmoe": _config(settings)})
    store = next(size for spec, size in plan.models[0].accumulator_bytes.items() if "ExpertNeurons" in spec)
    per_token_layer = store / 10_000 / 16
    assert 16 * 1024 <= per_token_layer <= 17 * 1024  # k=8 x d_expert=1024 float16 + indices


def test_the_probing_store_estimate_matches_the_bytes_a_real_pass_stores():
    import tl_moe
    from tl_moe.collect import collect
    from tl_moe.data import TokenConceptLabeler
    from tl_moe.pipeline.context import RunContext
    from tl_moe.pipeline.needs import ExpertNeurons

    options = RunOptions(analyses=("probing",), max_tokens=2000)
    model = tl_moe.load("toy/moe-16x2")
    run_context = RunContext(options, models={"toy/moe-16x2": model})
    spec = ExpertNeurons(tuple(model.moe_cfg.sparse_layers))
    stored = collect(
        model,
        run_context.dataset,
        {"store": spec.build(model, run_context)},
        max_tokens=2000,
        concept_labeler=TokenConceptLabeler(),
        progress=False,
    )["store"]
    tensors = [stored.token_index, stored.input_ids, stored.domain, stored.labels, *stored.rows.values()]
    actual = sum(t.numel() * t.element_size() for t in tensors)
    assert spec.estimate_bytes(model.moe_cfg, run_context) == pytest.approx(actual, rel=0.15)


def test_a_run_that_cannot_fit_is_refused_in_one_line():
    plan = plan_run(RunOptions(analyses=("domains",)))
    with pytest.raises(InputError, match="GiB") as error:
        check_fits(plan, available=1024)
    assert "\n" not in str(error.value)
    check_fits(plan, available=64 << 30)


def test_meta_models_allocate_nothing():
    from tl_moe.pipeline.plan import meta_model

    model = meta_model(_config(FLAGSHIPS["DeepSeek-V3"][0]))
    assert all(p.device == torch.device("meta") for p in model.parameters())


def test_the_drivers_plan_counts_the_backward_of_the_first_order_estimate():
    """The estimate's backward keeps every layer's activations for a batch: for OLMoE that is GiBs."""
    from tl_moe.pipeline.memory import backward_bytes

    settings, _, _ = FLAGSHIPS["OLMoE-1B-7B"]
    options = RunOptions(model="olmoe", dense_baseline=None, analyses=("drivers",), max_tokens=10_000)
    plan = plan_run(options, configs={"olmoe": _config(settings)})
    sizes = plan.models[0].accumulator_bytes
    estimate = next(size for spec, size in sizes.items() if spec.startswith("DriverEstimate"))
    cfg = plan.models[0].config
    tokens = options.batch_size * options.seq_len
    kept_per_layer = tokens * cfg.d_model * 4 * 10 + tokens * cfg.d_expert * cfg.experts_per_token * 4 * 3
    assert backward_bytes(cfg, options, 4) >= cfg.n_layers * kept_per_layer  # by hand, float32
    assert estimate >= backward_bytes(cfg, options, 4) > 1 << 30


def test_plan_refuses_a_window_longer_than_the_model_positions_as_analyze_does():
    """toy/moe-4x2 has 256 positions: plan refuses --seq-len 257 and 100000 with the line analyze's
    check gives, and plans 256 (planted: the boundary is accepted)."""
    from transformers import AutoConfig

    from tl_moe.pipeline.validation import SeqLenError, check_seq_len
    from tl_moe.zoo.registry import checkpoint_path

    config = AutoConfig.from_pretrained(checkpoint_path("toy/moe-4x2"))
    assert config.max_position_embeddings == 256
    for seq_len in (257, 100_000):
        options = RunOptions(model="toy/moe-4x2", dense_baseline=None, analyses=("domains",), seq_len=seq_len)
        with pytest.raises(SeqLenError) as planned:
            plan_run(options)
        with pytest.raises(SeqLenError) as analyzed:
            check_seq_len(seq_len, config, memory_bytes=1 << 50)
        assert str(planned.value) == str(analyzed.value)
        assert f"--seq-len {seq_len} is longer than the model's 256 positions" in str(planned.value)
    options = RunOptions(model="toy/moe-4x2", dense_baseline=None, analyses=("domains",), seq_len=256)
    assert plan_run(options).models[0].name == "toy/moe-4x2"


def test_a_refusal_for_a_huge_batch_names_its_activations_and_the_batch_flags():
    plan = plan_run(RunOptions(analyses=("domains",), dense_baseline=None, batch_size=100000))
    (model,) = plan.models
    accumulators = sum(model.accumulator_bytes.values())
    assert model.activation_bytes > 100 * (model.weight_bytes + accumulators)  # the batch is nearly all of it
    with pytest.raises(InputError) as error:
        check_fits(plan, available=1 << 30)
    message = str(error.value)
    assert "\n" not in message
    assert f"batch activations {model.activation_bytes / (1 << 30):.1f} GiB" in message
    assert "lower --batch-size or --seq-len" in message and "--max-tokens" not in message


def test_a_refusal_for_large_accumulators_advises_the_token_and_row_flags():
    options = RunOptions(
        analyses=("probing",), dense_baseline=None, skip_untrained_null=True, batch_size=1, seq_len=16
    )
    plan = plan_run(options)
    (model,) = plan.models
    accumulators = sum(model.accumulator_bytes.values())
    assert accumulators > 5 * max(model.activation_bytes, model.weight_bytes)  # planted: the stores dominate
    with pytest.raises(InputError) as error:
        check_fits(plan, available=1024)
    assert "lower --max-tokens or --probe-rows-per-class" in str(error.value)
    assert "--batch-size" not in str(error.value)
