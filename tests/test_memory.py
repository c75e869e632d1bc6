"""The one activation estimate and the one free-memory probe: values by hand, and a planted cgroup limit
that every check reading free memory (the sequence-length check, the runner's check before the first
pass, the planner's) sees."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tl_moe.errors import InputError
from tl_moe.models.config import MoEConfig
from tl_moe.pipeline import checks, memory, validation
from tl_moe.pipeline.context import RunContext
from tl_moe.pipeline.memory import Batch, activation_bytes, available_memory, cgroup_memory_left
from tl_moe.pipeline.model_sizes import model_sizes
from tl_moe.pipeline.options import RunOptions

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30

TOY = MoEConfig(
    "olmoe",
    n_layers=3,
    d_model=64,
    d_vocab=8192,
    n_heads=4,
    num_experts=8,
    experts_per_token=2,
    d_expert=32,
    sparse_layers=(1, 2),
    max_position_embeddings=256,
)


# ------------------------------------------------------------------------------ the estimate


def test_the_activation_estimate_by_hand():
    """Per token, TOY in bfloat16 with a window of 64: logits and log-softmax 2·8192·4 = 65536;
    attention 2·4 heads·64 keys, 16·64 residual and 4·(2·32) FFN values of 2 bytes = (512 + 1024 + 256)·2
    = 3584; float32 FFN activations of the 2 sparse layers 64·4·2 = 512. Batch 3 x 64 = 192 tokens."""
    assert activation_bytes(TOY, Batch(batch_size=3, seq_len=64), dtype_bytes=2) == 192 * (65536 + 3584 + 512)
    options = RunOptions(batch_size=3, seq_len=64)  # the run's options are a batch shape too
    assert activation_bytes(TOY, options, 2) == activation_bytes(TOY, Batch(3, 64), 2)


def test_the_estimate_grows_with_the_batch_and_quadratically_with_eager_attention():
    small = activation_bytes(TOY, Batch(1, 64))
    assert activation_bytes(TOY, Batch(4, 64)) == 4 * small
    assert activation_bytes(TOY, Batch(1, 128)) > 2 * small
    flash = {**TOY.to_dict(), "_attn_implementation": "sdpa"}  # keys in 1024-wide blocks
    assert activation_bytes(flash, Batch(1, 8192)) < activation_bytes(TOY, Batch(1, 8192))
    assert activation_bytes(flash, Batch(1, 1024)) == activation_bytes(TOY.to_dict(), Batch(1, 1024))


def test_sizes_read_the_same_from_a_config_a_dict_and_hugging_face_keys():
    hf_keys = {
        "max_position_embeddings": 256,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "vocab_size": 8192,
        "intermediate_size": 32,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 2,
    }
    expected = model_sizes(TOY.replace(n_layers=2, sparse_layers=(0, 1)))
    assert expected.ffn_width == 64 and expected.hooked_layers == 2 and expected.positions == 256
    assert model_sizes(hf_keys) == expected
    dense = model_sizes(TOY.replace(num_experts=0, experts_per_token=0, sparse_layers=(), d_mlp=96))
    assert (dense.ffn_width, dense.hooked_layers) == (96, 3)


def test_a_bridge_is_sized_by_its_moe_config(tiny_bridge):
    bridge = tiny_bridge("olmoe")
    cfg = bridge.moe_cfg
    sizes = model_sizes(bridge)
    assert sizes.ffn_width == cfg.d_expert * cfg.experts_per_token
    assert sizes.hooked_layers == len(cfg.sparse_layers)
    assert sizes.positions == checks.max_positions(bridge) == 64


# ------------------------------------------------------------------------------- the probe


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """``planted(limit, used)`` writes a cgroup v2 limit (``"max"``: none) under a fake cgroup root;
    the host reports 64 GiB available, so a limit below that is what binds."""
    root = tmp_path / "cgroup"
    root.mkdir()
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       {128 * GIB // 1024} kB\nMemAvailable:   {64 * GIB // 1024} kB\n")
    monkeypatch.setattr(memory, "CGROUP_ROOT", root)
    monkeypatch.setattr(memory, "MEMINFO", meminfo)

    def plant(limit: int | str, used: int) -> None:
        (root / "memory.max").write_text(f"{limit}\n")
        (root / "memory.current").write_text(f"{used}\n")

    return plant


def test_the_probe_is_capped_by_the_cgroup_limit(planted):
    planted("max", 5 * GIB)
    assert cgroup_memory_left() is None
    assert available_memory("cpu") == 64 * GIB
    planted(3 * GIB, GIB)
    assert cgroup_memory_left() == 2 * GIB
    assert available_memory("cpu") == available_memory(None) == 2 * GIB
    planted(GIB, 2 * GIB)  # usage above the limit (reclaimable cache): nothing left, never negative
    assert available_memory("cpu") == 0


def test_cgroup_v1_limits_are_read_too(tmp_path, monkeypatch):
    root = tmp_path / "cgroup"
    (root / "memory").mkdir(parents=True)
    monkeypatch.setattr(memory, "CGROUP_ROOT", root)
    assert cgroup_memory_left() is None  # no cgroup files: no limit known
    (root / "memory" / "memory.limit_in_bytes").write_text(f"{4 * GIB}\n")
    (root / "memory" / "memory.usage_in_bytes").write_text(f"{GIB}\n")
    assert cgroup_memory_left() == 3 * GIB


def test_the_seq_len_check_sees_the_cgroup_limit(planted):
    """100 windows of 256 tokens of TOY need about 2.0 GB: refused under a 2 GB cgroup limit (80% of it
    may be used), accepted with the same host memory and no limit."""
    needed = activation_bytes(TOY, Batch(100, 256))
    assert 0.8 * 2e9 < needed < 0.8 * 64 * GIB
    planted("max", 0)
    assert checks.check_seq_len(256, TOY, batch_size=100) == 256
    planted(int(2e9) + GIB, GIB)
    with pytest.raises(checks.SeqLenError, match=r"more than the 2\.0 GB free on cpu"):
        checks.check_seq_len(256, TOY, batch_size=100)


def test_the_runner_check_before_the_pass_sees_the_cgroup_limit(planted):
    from tl_moe.pipeline.runner import _check_memory

    options = RunOptions(model="toy", batch_size=8, seq_len=256, device="cpu")
    run_context = RunContext(options, configs={"toy": TOY})
    needed = activation_bytes(TOY, options)  # no accumulators: one batch's activations
    planted(needed + GIB, GIB + 1)
    with pytest.raises(InputError, match=rf"{(needed - 1) / GIB:.1f} GiB are free"):
        _check_memory(run_context, {"toy": []})
    planted(needed + GIB, GIB)
    _check_memory(run_context, {"toy": []})


def test_the_planner_sees_the_cgroup_limit(planted):
    from tl_moe.pipeline.plan import check_fits, plan_run

    plan = plan_run(RunOptions(analyses=("domains",), device="cpu"))
    assert plan.peak_bytes < 64 * GIB
    planted(plan.peak_bytes, 1)
    with pytest.raises(InputError, match=rf"but {(plan.peak_bytes - 1) / GIB:.1f} GiB are available"):
        check_fits(plan)
    planted(plan.peak_bytes, 0)
    check_fits(plan)


# ------------------------------------------------------------------- one error, one home


def test_there_is_one_input_error_class():
    """Every check's error is a tl_moe.errors.InputError and no module defines another InputError."""
    defined = [
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "src" / "tl_moe").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and node.name == "InputError"
    ]
    assert defined == ["src/tl_moe/errors.py"]
    for name in ("SeqLenError", "DeviceError", "ModelSourceError", "BudgetError", "ProbeSizeError"):
        assert issubclass(getattr(checks, name), InputError)
    with pytest.raises(InputError) as refused:
        checks.check_seq_len(1)
    assert refused.value.input == "--seq-len"


def test_the_former_module_name_exports_every_check():
    assert sorted(validation.__all__) == sorted(checks.__all__)
    for name in checks.__all__:
        assert getattr(validation, name) is getattr(checks, name)
