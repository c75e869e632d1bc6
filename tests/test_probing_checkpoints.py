"""Probing resumes after an interruption: each finished layer / arm is a checksummed, content-keyed step.

A run is interrupted (KeyboardInterrupt, as Ctrl-C raises) inside the paper protocol's second layer,
then inside the held-out protocol's second block; each rerun must not recompute what finished (spied
on the per-layer and per-block fits), and the final numbers must equal an uninterrupted run exactly.
A changed option or model recomputes; a damaged step is refused in one line; ``fresh`` ignores it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import tl_moe
from tl_moe.analysis import concept_probing, held_out_probing
from tl_moe.analysis._step_values import pack_frame, unpack_frame
from tl_moe.analysis.probing import KSparseProbe
from tl_moe.collect.checkpoint import CheckpointCorruptError, CheckpointMismatchError
from tl_moe.collect.steps import ResumableSteps, decode, encode
from tl_moe.pipeline import RunOptions, run

sys.path.insert(0, str(Path(__file__).parent))
from planted_models import dense_copy_pair  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    moe_dir, dense_dir = dense_copy_pair(tmp_path_factory.mktemp("planted"))
    return moe_dir, dense_dir


def load_models(pair):
    moe_dir, dense_dir = pair
    return {"moe": tl_moe.load(moe_dir, device="cpu"), "dense": tl_moe.load(dense_dir, device="cpu")}


def options(out: Path, **changes) -> RunOptions:
    # 10k tokens reach enough documents for the held-out protocol (>= 24).
    settings = dict(
        model="moe",
        dense_baseline="dense",
        out=out,
        max_tokens=10_000,
        batch_size=8,
        workers=1,  # the spies below count the fits of this process (worker runs resume alike: test_workers)
        probe_ks=(1,),
        min_examples=20,
        held_out_min_examples=20,
        min_documents=10,  # a small planted run (~23 test documents) whose answer is known
        bootstrap_resamples=200,
        skip_untrained_null=True,
        progress=False,
    )
    return RunOptions(**{**settings, **changes})


def probe(opts: RunOptions, models) -> object:
    return run(opts, analyses=["probing"], models=models)["probing"]


class Spy:
    """Wraps the per-layer (paper) and per-block (held-out) fits: records calls, can interrupt one."""

    def __init__(self, monkeypatch) -> None:
        self.layers: list[int] = []
        self.blocks: list[tuple[str, ...]] = []
        self.stop_layer: int | None = None
        self.stop_block: int | None = None
        layer_fit, block_fit = concept_probing.probe_expert_layer, held_out_probing.fit_selection_block

        def layer(stored, layer, *args, **kwargs):
            self.layers.append(layer)  # every layer whose fit started
            if layer == self.stop_layer:
                raise KeyboardInterrupt
            return layer_fit(stored, layer, *args, **kwargs)

        def block(block, *args, **kwargs):
            if self.stop_block is not None and len(self.blocks) == self.stop_block:
                raise KeyboardInterrupt
            self.blocks.append(tuple(block.names))
            return block_fit(block, *args, **kwargs)

        monkeypatch.setattr(concept_probing, "probe_expert_layer", layer)
        monkeypatch.setattr(held_out_probing, "fit_selection_block", block)


def assert_same(a, b) -> None:
    for name in ("moe_units", "dense_units", "curves", "near_best", "comparisons"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True)
    assert list(a.held_out) == list(b.held_out) and a.held_out
    for arm in a.held_out:
        x, y = a.held_out[arm], b.held_out[arm]
        pd.testing.assert_frame_equal(x.units, y.units, check_exact=True)
        pd.testing.assert_frame_equal(x.chosen, y.chosen, check_exact=True)
        np.testing.assert_array_equal(x.doc_counts, y.doc_counts)
        np.testing.assert_array_equal(x.test_docs, y.test_docs)
    assert a.metrics() == b.metrics() or str(a.metrics()) == str(b.metrics())  # NaN-safe


def step_files(out: Path) -> list[Path]:
    return sorted((out / "checkpoints" / "probing").rglob("*.pt"))


@pytest.fixture(scope="module")
def reference(pair, tmp_path_factory):
    """An uninterrupted run; its checkpoints are removed once it succeeds (keep_checkpoints=False)."""
    out = tmp_path_factory.mktemp("reference")
    result = probe(options(out), load_models(pair))
    assert not any((out / "checkpoints").rglob("*.pt")), "a finished run removes its checkpoints"
    assert (out / "results.json").exists()
    return result


def test_an_interrupted_probing_resumes_after_the_last_finished_layer_with_the_same_numbers(
    pair, reference, tmp_path, monkeypatch
):
    models, spy = load_models(pair), Spy(monkeypatch)
    opts = options(tmp_path, keep_checkpoints=True)
    spy.stop_layer = 1  # Ctrl-C inside the paper protocol's second layer
    with pytest.raises(KeyboardInterrupt):
        probe(opts, models)
    assert spy.layers == [0, 1] and spy.blocks == []
    assert [p.name for p in step_files(tmp_path)] == ["paper-moe-L0.pt"]

    spy.layers, spy.stop_layer, spy.stop_block = [], None, 1  # then inside the held-out protocol's 2nd block
    with pytest.raises(KeyboardInterrupt):
        probe(opts, models)
    assert spy.layers == [1], "layer 0 was finished: it must not be probed again"
    assert len(spy.blocks) == 1
    assert (step_files(tmp_path)[0].parent / "held_out-moe-p0-b0.pt").exists()

    spy.layers, spy.blocks, spy.stop_block = [], [], None
    resumed = probe(opts, models)
    assert spy.layers == [], "both layers were finished"
    blocks = [p for p in step_files(tmp_path) if "-b" in p.name]
    assert len(spy.blocks) == len(blocks) - 1 > 0, "every block but the finished one is fitted once"
    assert_same(resumed, reference)


def forget_passes(out: Path) -> None:
    """Remove the finished collection checkpoints (else a changed model is refused by the collection)."""
    for path in (out / "checkpoints").rglob("collect-*.pt"):
        path.unlink()


def test_a_changed_option_or_model_recomputes_and_a_damaged_step_is_refused(pair, tmp_path, monkeypatch):
    # The MoE alone (no dense baseline): the same steps for the MoE, in less time.
    models, spy = {"moe": load_models(pair)["moe"]}, Spy(monkeypatch)
    opts = options(tmp_path, keep_checkpoints=True, dense_baseline=None)
    spy.stop_layer = 1
    with pytest.raises(KeyboardInterrupt):
        probe(opts, models)
    assert spy.layers == [0, 1]
    (saved,) = step_files(tmp_path)

    # A probing option the collection does not depend on: the same passes, other probing steps.
    spy.layers, spy.stop_layer = [], 0
    with pytest.raises(KeyboardInterrupt):
        probe(opts.replace(min_examples=21), models)
    assert spy.layers == [0], "layer 0 is probed again under the new option"
    assert step_files(tmp_path) == [saved]  # and nothing finished was overwritten

    # The same model with one weight changed: another pass identity, so layer 0 is probed again.
    forget_passes(tmp_path)
    changed = {"moe": load_models(pair)["moe"]}
    with torch.no_grad():
        next(changed["moe"].parameters()).add_(1e-3)
    spy.layers, spy.stop_layer = [], 1
    with pytest.raises(KeyboardInterrupt):
        probe(opts, changed)
    assert spy.layers == [0, 1]
    assert len(step_files(tmp_path)) == 2 and saved.exists()

    # A damaged step of the original inputs: refused in one line naming the file and --fresh.
    forget_passes(tmp_path)
    data = bytearray(saved.read_bytes())
    data[-20] ^= 0xFF
    saved.write_bytes(bytes(data))
    spy.layers, spy.stop_layer = [], None
    with pytest.raises(CheckpointCorruptError) as refused:
        probe(opts, models)
    message = str(refused.value)
    assert "\n" not in message and str(saved) in message and "--fresh" in message
    assert refused.value.reason == "checksum" and spy.layers == []

    # --fresh ignores it: probed again from layer 0; the finished run removes every checkpoint.
    spy.stop_layer = 1
    with pytest.raises(KeyboardInterrupt):
        probe(opts.replace(fresh=True), models)
    assert spy.layers == [0, 1]
    spy.stop_layer, spy.layers = None, []
    finished = probe(opts.replace(keep_checkpoints=False), models)
    assert spy.layers == [1] and list(finished.held_out) == ["moe"]
    assert not any((tmp_path / "checkpoints").rglob("*.pt"))


def test_a_step_file_moved_to_another_fingerprint_is_refused_naming_the_field(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"frame": pd.DataFrame({"layer": [0, 1]}), "n": 3}

    first = ResumableSteps(tmp_path, {"settings": {"ks": [1, 2]}, "passes": {"moe": "aaaa"}})
    second = ResumableSteps(tmp_path, {"settings": {"ks": [1, 2]}, "passes": {"moe": "bbbb"}})
    assert first.directory != second.directory
    first("layer-0", compute)
    second("layer-0", compute)
    assert len(calls) == 2  # another pass identity is another folder: recomputed
    assert ResumableSteps(tmp_path, first.fields)("layer-0", compute)["n"] == 3 and len(calls) == 2
    second.path("layer-0").write_bytes(first.path("layer-0").read_bytes())
    with pytest.raises(CheckpointMismatchError) as refused:
        ResumableSteps(tmp_path, second.fields)("layer-0", compute)
    assert refused.value.field == "passes.moe" and "--fresh" in str(refused.value)


def test_step_values_come_back_equal_dtypes_included():
    frame = pd.DataFrame(
        {
            "unit": ["L0E1", "L1E0", "L1E1"],
            "k": np.array([1, 2, 4], dtype=np.int64),
            "f1": [0.5, np.nan, 1.0],
            "status": pd.Series(["ok", "not_enough_samples", "ok"], dtype=object),
            "small": np.array([1, -2, 3], dtype=np.int8),
            "flag": [True, False, True],
            "maybe": [None, "x", None],
        },
        index=[5, 7, 9],
    )
    value = {
        "frame": frame,
        "empty": pd.DataFrame(),
        "array": np.arange(6.0).reshape(2, 3),
        "tensor": torch.arange(10)[2:4],
        "pairs": [(0, "L0E1", torch.tensor([1.5]))],
        3: np.float64(0.25),
    }
    back = decode(encode(value))
    pd.testing.assert_frame_equal(back["frame"], frame, check_exact=True)
    pd.testing.assert_frame_equal(back["empty"], pd.DataFrame())
    np.testing.assert_array_equal(back["array"], value["array"])
    assert back["array"].dtype == np.float64
    assert torch.equal(back["tensor"], torch.tensor([2, 3]))
    assert back["pairs"][0][:2] == (0, "L0E1") and torch.equal(back["pairs"][0][2], torch.tensor([1.5]))
    assert back[3] == 0.25
    with pytest.raises(TypeError, match="cannot hold"):
        encode(object())


def test_packed_tables_come_back_equal_and_save_each_name_once():
    probe = KSparseProbe(ks=(1, 2), min_examples=5).fit(
        torch.randn(3, 200, 8),
        torch.rand(200, 2, generator=torch.Generator().manual_seed(0)) > 0.5,
        unit_names=["L0E0", "L0E1", "L0E2"],
        concept_names=["x", "y"],
    )
    named = probe.to_frame().assign(layer=0)
    numbered = KSparseProbe(ks=(1,), min_examples=5).fit(
        torch.randn(2, 100, 4), torch.arange(100)[:, None] % 2 == 0
    )
    for frame in (
        named,
        numbered.to_frame(),
        named.iloc[:0],
        named.set_index(named.index * 3),
        pd.DataFrame(),
    ):
        packed, values = pack_frame(frame)
        back = unpack_frame(*decode(encode((packed, values))))
        pd.testing.assert_frame_equal(back, frame, check_exact=True)
    payload = encode(pack_frame(named))
    names = [v for column in payload[1]["items"] for v in column[1][0]]
    assert sorted(names) == sorted(["L0E0", "L0E1", "L0E2", "x", "y", "ok"]), names  # once each, not per row
    assert all("objects" not in column for column in payload[0]["data"]), "no column saved string by string"
