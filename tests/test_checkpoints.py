"""Trustworthy resume: checkpoints keyed by content, checksummed, refused in one clear line.

The three silent-wrong-result cases of issue 13 come first. They use only the API that
existed before content fingerprints (``collect`` and ``ValueError``), so that on the old
code they fail for the reason the issue names (a stale or damaged checkpoint is reused
without a word) rather than on an import.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import datasets
import pytest
import torch

import tl_moe
from tiny_models import save_tiny_model
from tl_moe.analysis.routing_stats import routed_tokens_by_domain, tokens_by_domain
from tl_moe.collect import Accumulator, collect, domain_names
from tl_moe.collect import checkpoint as ckpt

SRC = Path(__file__).resolve().parents[1] / "src" / "tl_moe"
MARK = 1234.5678


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def corpus(n_rows: int = 100) -> datasets.Dataset:
    """``n_rows`` short documents of tiny-tokenizer words in three domains."""
    generator = torch.Generator().manual_seed(0)
    texts, domains = [], []
    for row in range(n_rows):
        n_words = 3 + row % 5
        words = torch.randint(3, 96, (n_words,), generator=generator).tolist()
        texts.append(" ".join(f"w{w}" for w in words))
        domains.append(("code", "math", "prose")[row % 3])
    return datasets.Dataset.from_dict({"text": texts, "domain": domains})


def with_row(dataset: datasets.Dataset, row: int, **values) -> datasets.Dataset:
    data = dataset.to_dict()
    for column, value in values.items():
        data[column][row] = value
    return datasets.Dataset.from_dict(data)


def routing_accumulators(model, dataset):
    n_domains = len(domain_names(dataset))
    return {
        "routed": routed_tokens_by_domain(model.moe_cfg, n_domains),
        "tokens": tokens_by_domain(n_domains),
    }


def run(model, dataset, directory, **kwargs):
    return collect(
        model,
        dataset,
        routing_accumulators(model, dataset),
        batch_size=4,
        seq_len=16,
        checkpoint_dir=directory,
        progress=False,
        **kwargs,
    )


def counts(results) -> dict[str, torch.Tensor]:
    return {name: result.clone() for name, result in results.items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def olmoe(tiny_bridge):
    return tiny_bridge("olmoe")


class MarkedCounter(Accumulator):
    """Counts tokens and keeps a tensor of a recognisable value, to find its bytes in a file."""

    def __init__(self) -> None:
        self.count = torch.zeros((), dtype=torch.float64)
        self.marker = torch.full((16,), MARK, dtype=torch.float64)

    def hook_names(self, model):
        return []

    def update(self, acts, meta):
        self.count = self.count + meta.n_tokens

    def merge(self, other):
        self.count = self.count + other.count
        return self

    def state_dict(self):
        return {"count": self.count, "marker": self.marker}

    def load_state_dict(self, state):
        self.count, self.marker = state["count"], state["marker"]

    def finalize(self):
        return float(self.count), float(self.marker.sum())


def run_marked(model, dataset, directory, **kwargs):
    return collect(
        model,
        dataset,
        {"marked": MarkedCounter()},
        batch_size=4,
        seq_len=16,
        checkpoint_dir=directory,
        progress=False,
        **kwargs,
    )["marked"]


# ------------------------------------------------- the silent-wrong-result cases of issue 13


def test_new_weights_at_the_same_path_are_not_answered_from_the_old_checkpoint(tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "checkpoints"
    save_tiny_model("olmoe", model_dir, seed=0)
    dataset = corpus()
    run(tl_moe.load(model_dir, device="cpu"), dataset, out)

    save_tiny_model("olmoe", model_dir, seed=1)  # "retrained": same path, class, name, size
    retrained = tl_moe.load(model_dir, device="cpu")
    truth = counts(
        collect(
            retrained,
            dataset,
            routing_accumulators(retrained, dataset),
            batch_size=4,
            seq_len=16,
            progress=False,
        )
    )
    with pytest.raises(ValueError, match="model.weights") as refused:
        stale = counts(run(retrained, dataset, out))
        assert_same(stale, truth)  # on the old code: reached, and fails (stale routing counts)
    assert getattr(refused.value, "field", None) == "model.weights"
    assert_same(counts(run(retrained, dataset, out, fresh=True)), truth)


def test_an_edited_middle_corpus_row_is_detected(olmoe, tmp_path):
    dataset = corpus(100)
    run(olmoe, dataset, tmp_path)
    # Row 40 is none of the 48 rows the old digest sampled (16 first, 16 last, every 100/16th).
    edited = with_row(dataset, 40, domain="prose", text=dataset[40]["text"] + " w7 w8 w9 w10")
    with pytest.raises(ValueError, match="corpus.digest"):
        run(olmoe, edited, tmp_path)
    fresh = counts(run(olmoe, edited, tmp_path, fresh=True))
    assert not torch.equal(fresh["tokens"], counts(run(olmoe, dataset, tmp_path / "original"))["tokens"])


def test_a_flipped_byte_in_tensor_data_is_refused(olmoe, tmp_path):
    dataset = corpus(30)
    run_marked(olmoe, dataset, tmp_path)
    (path,) = [p for p in tmp_path.iterdir() if p.suffix == ".pt"]
    data = bytearray(path.read_bytes())
    at = data.find(torch.tensor([MARK], dtype=torch.float64).numpy().tobytes())
    assert at > 0
    data[at + 3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum") as refused:
        run_marked(olmoe, dataset, tmp_path)
    assert "\n" not in str(refused.value)


# ------------------------------------------------------------- messages and damaged files


def test_a_mismatch_is_one_line_naming_the_field_and_how_to_start_over(olmoe, tmp_path):
    dataset = corpus(40)
    run(olmoe, dataset, tmp_path, max_tokens=200)
    with pytest.raises(ckpt.CheckpointMismatchError) as refused:
        run(olmoe, dataset, tmp_path, max_tokens=150)
    error = refused.value
    message = str(error)
    assert "\n" not in message and len(message) < 400
    assert error.field == "max_tokens" and (error.saved, error.current) == (200, 150)
    assert "different max_tokens (200 in the checkpoint, 150 now)" in message
    assert "--fresh" in message and str(error.path) in message
    assert isinstance(error, ValueError)


def test_a_resume_with_another_seed_names_the_seed_not_the_corpus_digest(olmoe, tmp_path):
    """The run shuffles its corpus split with --seed, so another seed changes the corpus digest too;
    the refusal names the seed (the setting the user changed), then the digest it changed."""
    dataset = corpus(40)
    run(olmoe, dataset.shuffle(seed=0), tmp_path, max_tokens=200, settings={"seed": 0})
    with pytest.raises(ckpt.CheckpointMismatchError) as refused:
        run(olmoe, dataset.shuffle(seed=1), tmp_path, max_tokens=200, settings={"seed": 1})
    error = refused.value
    assert error.field == "seed" and (error.saved, error.current) == (0, 1)
    assert "different seed (0 in the checkpoint, 1 now) and 1 more field (corpus.digest)" in str(error)
    same = counts(run(olmoe, dataset.shuffle(seed=0), tmp_path, max_tokens=200, settings={"seed": 0}))
    assert same  # the same seed resumes the checkpoint


def test_a_changed_accumulator_names_its_setting(olmoe, tmp_path):
    dataset = corpus(20)
    collect(olmoe, dataset, {"marked": MarkedCounter()}, seq_len=16, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ckpt.CheckpointMismatchError, match="different accumulators.tokens") as refused:
        collect(
            olmoe,
            dataset,
            {"marked": MarkedCounter(), "tokens": tokens_by_domain(3)},
            seq_len=16,
            checkpoint_dir=tmp_path,
            progress=False,
        )
    assert "absent in the checkpoint" in str(refused.value)


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated", "old_format", "header_only"])
def test_a_damaged_checkpoint_is_one_clear_line_and_fresh_starts_over(olmoe, tmp_path, damage):
    dataset = corpus(30)
    expected = run_marked(olmoe, dataset, tmp_path / "clean")
    run_marked(olmoe, dataset, tmp_path)
    (path,) = [p for p in tmp_path.iterdir() if p.suffix == ".pt"]
    data = path.read_bytes()
    header_end = data.index(b"\n") + 1
    damaged = {
        "empty": b"",
        "garbage": os.urandom(300),
        "truncated": data[: len(data) // 2],
        "old_format": data[header_end:],  # a plain torch.save file, as written before checksums
        "header_only": data[:header_end],
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(ckpt.CheckpointCorruptError) as refused:
        run_marked(olmoe, dataset, tmp_path)
    message = str(refused.value)
    assert "\n" not in message and str(path) in message and "--fresh" in message
    assert refused.value.path == path
    assert run_marked(olmoe, dataset, tmp_path, fresh=True) == expected
    assert run_marked(olmoe, dataset, tmp_path) == expected  # the overwritten checkpoint resumes


def test_verified_files_round_trip_and_never_run_code(tmp_path):
    payload = {"a": torch.arange(5), "b": [1, 2.5, "x", None], "c": {"d": torch.ones(2, 2)}}
    ckpt.write_verified(tmp_path / "state.pt", payload)
    loaded = ckpt.read_verified(tmp_path / "state.pt")
    assert torch.equal(loaded["a"], payload["a"]) and loaded["b"] == payload["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left

    marker = tmp_path / "pwned"
    planted = PlantedPickle(marker)
    ckpt.write_verified(tmp_path / "evil.pt", {"x": planted})  # a valid checksum over a malicious pickle
    with pytest.raises(ckpt.CheckpointCorruptError, match="could not be read"):
        ckpt.read_verified(tmp_path / "evil.pt")
    assert not marker.exists()


class PlantedPickle:
    """Unpickling this object with full pickle runs code (creates ``marker``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


# ---------------------------------------------------------------- fresh / keep / remove


def test_fresh_overwrites_a_mismatching_checkpoint_and_the_new_one_resumes(olmoe, tmp_path):
    dataset = corpus(40)
    run(olmoe, dataset, tmp_path, max_tokens=200)
    first = counts(run(olmoe, dataset, tmp_path, max_tokens=150, fresh=True))
    again = counts(run(olmoe, dataset, tmp_path, max_tokens=150))
    assert_same(first, again)
    assert int(first["tokens"].sum()) < 150


def test_keep_checkpoint_false_leaves_no_checkpoint(olmoe, tmp_path):
    directory = tmp_path / "checkpoints" / "moe"
    kept = counts(run(olmoe, corpus(30), tmp_path / "kept"))
    dropped = counts(run(olmoe, corpus(30), directory, keep_checkpoint=False))
    assert_same(kept, dropped)
    assert not directory.exists()
    assert list((tmp_path / "kept").iterdir())


def test_remove_checkpoints_removes_only_checkpoint_files(olmoe, tmp_path):
    root = tmp_path / "checkpoints"
    run(olmoe, corpus(20), root / "moe")
    run(olmoe, corpus(20), root / "dense")
    ckpt.write_verified(root / "probing" / "layer0.pt", {"done": True})
    (root / "probing" / "notes.txt").write_text("keep me")
    (root / "moe" / "collect-shard0-of-1.pt.x1y2.tmp").write_bytes(ckpt._MAGIC + b"half-written")
    removed = ckpt.remove_checkpoints(root)
    assert {p.relative_to(root).as_posix() for p in removed} == {
        "moe/collect-shard0-of-1.pt",
        "moe/collect-shard0-of-1.pt.x1y2.tmp",
        "dense/collect-shard0-of-1.pt",
        "probing/layer0.pt",
    }
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["probing", "probing/notes.txt"]
    assert ckpt.remove_checkpoints(tmp_path / "missing") == []


# ---------------------------------------------------------------------- the digests


def test_weights_digest_follows_the_weights_and_is_cached(tmp_path, monkeypatch):
    from tl_moe.collect import hashing

    first = tl_moe.load(save_tiny_model("olmoe", tmp_path / "a", seed=0), device="cpu")
    twin = tl_moe.load(save_tiny_model("olmoe", tmp_path / "b", seed=0), device="cpu")
    other = tl_moe.load(save_tiny_model("olmoe", tmp_path / "c", seed=1), device="cpu")
    digest = hashing.weights_digest(first)
    assert digest == hashing.weights_digest(twin)  # same bytes, another path: same digest
    assert digest != hashing.weights_digest(other)

    calls = []
    real_sha = hashing.hashlib.sha256
    monkeypatch.setattr(hashing.hashlib, "sha256", lambda *a: calls.append(1) or real_sha(*a))
    assert hashing.weights_digest(first) == digest
    assert len(calls) == 1  # only the cheap version key, no re-hash of the weights

    parameter = next(p for name, p in first.named_parameters() if "experts" in name)
    with torch.no_grad():
        parameter[0].mul_(1.0001)  # an in-place edit bumps the version counter
    assert hashing.weights_digest(first) != digest
    with torch.no_grad():
        parameter.copy_(next(p for name, p in twin.named_parameters() if "experts" in name))
    assert hashing.weights_digest(first) == digest


def test_corpus_digest_sees_every_row_and_only_the_columns_a_pass_reads():
    from tl_moe.collect.hashing import corpus_digest

    base = corpus(300)
    digest = corpus_digest(base)
    assert corpus_digest(datasets.Dataset.from_dict(base.to_dict())) == digest
    seen = set()
    for row in range(0, 300, 7):
        changed = corpus_digest(with_row(base, row, text=base[row]["text"] + " w1"))
        assert changed != digest, row
        seen.add(changed)
    assert len(seen) == len(range(0, 300, 7))
    assert (
        corpus_digest(with_row(base, 150, domain="math" if base[150]["domain"] != "math" else "code"))
        != digest
    )
    swapped = base.select([1, 0] + list(range(2, 300)))
    assert corpus_digest(swapped) != digest
    assert corpus_digest(base.select(range(299))) != digest
    # text moved across a row boundary is still a different corpus
    a = datasets.Dataset.from_dict({"text": ["w1 w2", "w3"]})
    b = datasets.Dataset.from_dict({"text": ["w1", " w2w3"]})
    assert corpus_digest(a) != corpus_digest(b)
    # a column no pass reads does not invalidate checkpoints
    with_source = base.add_column("source", ["x"] * 300)
    assert corpus_digest(with_source) == corpus_digest(with_source.map(lambda r: {"source": "y"}))


# --------------------------------------------------------------------- weights_only


def test_every_torch_load_in_src_is_weights_only():
    offenders = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                safe = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                if not safe:
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize("framing", ["plain_torch_save", "valid_checksum"])
def test_a_planted_pickle_in_train_state_is_refused_and_runs_nothing(tmp_path, framing):
    from tl_moe.models.config import MoEConfig
    from tl_moe.zoo import train as training
    from tl_moe.zoo.tokenizer import load_tokenizer

    marker = tmp_path / "pwned"
    state_path = tmp_path / "run" / "train_state.pt"
    state_path.parent.mkdir()
    planted = {"model": PlantedPickle(marker), "step": 1}
    if framing == "plain_torch_save":
        torch.save(planted, state_path)  # what `tl-moe zoo train --out-root ROOT` used to execute
    else:
        ckpt.write_verified(state_path, planted)
    cfg = MoEConfig(
        "olmoe",
        n_layers=1,
        d_model=16,
        d_vocab=8192,
        n_heads=2,
        num_experts=2,
        experts_per_token=1,
        d_expert=8,
        sparse_layers=(0,),
        max_position_embeddings=32,
    )
    texts = {"train": {"text": ["def f(x):\n    return x + 1\n" * 20] * 4}}
    with pytest.raises(ValueError, match="train_state.pt") as refused:
        training.train_model(
            cfg,
            state_path.parent,
            training.TrainConfig(steps=1, batch_size=1, seq_len=8),
            corpus=texts,
            tokenizer=load_tokenizer(),
            device="cpu",
            progress=False,
        )
    assert not marker.exists()
    assert "\n" not in str(refused.value) and "restart training" in str(refused.value)


def test_a_pass_without_checkpoints_computes_no_digest(olmoe, monkeypatch, tmp_path):
    def refuse(*args):
        raise AssertionError("digest computed without a checkpoint_dir")

    monkeypatch.setattr(ckpt, "weights_digest", refuse)
    monkeypatch.setattr(ckpt, "corpus_digest", refuse)
    collect(olmoe, corpus(10), {"tokens": tokens_by_domain(3)}, seq_len=16, progress=False)
    with pytest.raises(AssertionError, match="digest computed"):
        collect(
            olmoe,
            corpus(10),
            {"tokens": tokens_by_domain(3)},
            seq_len=16,
            progress=False,
            checkpoint_dir=tmp_path,
        )


def test_concurrent_writers_of_one_checkpoint_leave_a_whole_one(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "collect-shard0-of-1.pt"
    payloads = [{"writer": i, "data": torch.full((200_000,), float(i))} for i in range(6)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda payload: ckpt.write_verified(path, payload), payloads))
    loaded = ckpt.read_verified(path)
    assert torch.equal(loaded["data"], payloads[loaded["writer"]]["data"])
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_moved_model_resumes_and_a_changed_config_does_not(tmp_path):
    import shutil

    save_tiny_model("olmoe", tmp_path / "here", seed=0)
    dataset = corpus(30)
    first = run_marked(tl_moe.load(tmp_path / "here", device="cpu"), dataset, tmp_path / "out")
    shutil.move(tmp_path / "here", tmp_path / "there")  # same content, another path: resumes
    moved = tl_moe.load(tmp_path / "there", device="cpu")
    calls = []
    with moved.hooks(fwd_hooks=[("embed.hook_out", lambda act, hook: calls.append(1))]):
        assert run_marked(moved, dataset, tmp_path / "out") == first
    assert calls == []

    config_path = tmp_path / "there" / "config.json"
    config = json.loads(config_path.read_text())
    config["norm_topk_prob"] = not config.get("norm_topk_prob", False)  # routing changes, weights do not
    config_path.write_text(json.dumps(config))
    with pytest.raises(ckpt.CheckpointMismatchError) as refused:
        run_marked(tl_moe.load(tmp_path / "there", device="cpu"), dataset, tmp_path / "out")
    assert refused.value.field == "model.config"


def test_a_resume_removes_the_temporary_files_a_kill_left_and_keeps_a_newer_writers(olmoe, tmp_path):
    dataset = corpus(30)
    first = counts(run(olmoe, dataset, tmp_path, max_tokens=150))
    path = ckpt.checkpoint_path(tmp_path, 0, 1)
    empty = path.parent / f"{path.name}.ab12cd34.tmp"  # killed right after the file was created
    partial = path.parent / f"{path.name}.ef56gh78.tmp"  # killed halfway through the payload
    newer = path.parent / f"{path.name}.ij90kl12.tmp"  # another writer's file, written after the resume began
    empty.write_bytes(b"")
    partial.write_bytes(ckpt._MAGIC + b"half-written")
    newer.write_bytes(ckpt._MAGIC + b"in flight")
    hour_ago = path.stat().st_mtime - 3600
    for leftover in (empty, partial):
        os.utime(leftover, (hour_ago, hour_ago))
    in_an_hour = path.stat().st_mtime + 3600
    os.utime(newer, (in_an_hour, in_an_hour))
    resumed = counts(run(olmoe, dataset, tmp_path, max_tokens=150))
    assert_same(first, resumed)
    assert not empty.exists() and not partial.exists()
    assert newer.exists()
    assert ckpt.remove_stale_temporaries(path, older_than=path.stat().st_mtime) == []  # the newer one stays
