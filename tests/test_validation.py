"""Input checks (tl_moe.pipeline.checks) that run before any pass: each bad input is one line naming it and what is accepted."""

from __future__ import annotations

import json
import os
import socket
import tempfile

import datasets
import pytest
import torch

from tl_moe.models.config import MoEConfig
from tl_moe.pipeline import checks as v

TOY = MoEConfig(
    "olmoe",
    n_layers=2,
    d_model=64,
    d_vocab=8192,
    n_heads=4,
    num_experts=8,
    experts_per_token=2,
    d_expert=32,
    sparse_layers=(0, 1),
    max_position_embeddings=256,
)


def one_line(error: pytest.ExceptionInfo, input_name: str) -> str:
    message = str(error.value)
    assert "\n" not in message and len(message) < 400, message
    assert isinstance(error.value, ValueError) and error.value.input == input_name
    assert message.startswith(input_name) or input_name in message
    return message


# ----------------------------------------------------------------------------- seq_len


def test_seq_len_within_the_models_positions_passes():
    assert v.check_seq_len(128, TOY, memory_bytes=10**12) == 128
    assert v.check_seq_len(256, TOY, memory_bytes=10**12) == 256


def test_seq_len_beyond_the_models_positions_is_refused():
    with pytest.raises(v.SeqLenError) as refused:
        v.check_seq_len(1024, TOY, memory_bytes=10**12)
    assert "longer than the model's 256 positions" in one_line(refused, "--seq-len")
    assert "accepted: 2..256" in str(refused.value)


def test_a_model_with_one_position_is_too_short_whatever_the_seq_len():
    """No window fits in one position (BOS + one token needs two): the message says so, not "2..1"."""
    with pytest.raises(v.SeqLenError) as refused:
        v.check_seq_len(2, {"max_position_embeddings": 1}, memory_bytes=10**12)
    message = one_line(refused, "--seq-len")
    assert "too short to analyze" in message and "at least 2 positions" in message and "2..1" not in message
    assert v.check_seq_len(2, {"max_position_embeddings": 2}, memory_bytes=10**12) == 2


@pytest.mark.parametrize("bad", [0, 1, -5, "128", 12.0, True, None])
def test_seq_len_that_is_not_a_length_is_refused(bad):
    with pytest.raises(v.SeqLenError) as refused:
        v.check_seq_len(bad, TOY)
    assert "accepted: an integer >= 2" in one_line(refused, "--seq-len")


def test_seq_len_too_large_for_memory_is_refused_with_what_fits():
    long_context = {
        "max_position_embeddings": 131072,
        "hidden_size": 2048,
        "num_attention_heads": 16,
        "vocab_size": 50304,
        "intermediate_size": 1024,
        "num_experts_per_tok": 8,
    }
    with pytest.raises(v.SeqLenError) as refused:
        v.check_seq_len(100_000, long_context, batch_size=8, memory_bytes=16 * 10**9)
    message = one_line(refused, "--seq-len")
    assert "needs about" in message and "16.0 GB free" in message
    fits = int(message.split("up to ")[1].split()[0])
    assert 2 <= fits < 100_000
    assert v.check_seq_len(fits, long_context, batch_size=8, memory_bytes=16 * 10**9) == fits
    with pytest.raises(v.SeqLenError):
        v.check_seq_len(fits + 1, long_context, batch_size=8, memory_bytes=16 * 10**9)


def test_seq_len_is_read_off_a_loaded_bridge(tiny_bridge):
    bridge = tiny_bridge("olmoe")
    assert v.max_positions(bridge) == 64
    with pytest.raises(v.SeqLenError, match="64 positions"):
        v.check_seq_len(65, bridge)
    assert v.check_seq_len(64, bridge) == 64


# ----------------------------------------------------------------------------- device


def test_cpu_and_auto_resolve():
    assert v.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert v.resolve_device(None).type in (expected, "mps")
    assert v.resolve_device("auto") == v.resolve_device(None)


@pytest.mark.parametrize("spec", ["banana", "cuda:x", "", "gpu"])
def test_a_string_that_is_not_a_device_is_refused(spec):
    if spec == "":
        assert v.resolve_device(spec) == v.resolve_device(None)
        return
    with pytest.raises(v.DeviceError) as refused:
        v.resolve_device(spec)
    assert "accepted: auto, cpu, cuda, cuda:N, mps" in one_line(refused, "--device")


def test_cuda_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(v.DeviceError) as refused:
            v.resolve_device(spec)
        assert "CUDA is not available here" in one_line(refused, "--device")


def test_a_missing_gpu_index_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert v.resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(v.DeviceError) as refused:
        v.resolve_device("cuda:3")
    assert "has 1 CUDA device(s); accepted: cuda:0..cuda:0" in one_line(refused, "--device")


def test_the_input_name_is_the_callers(monkeypatch):
    with pytest.raises(v.DeviceError, match="^device= 'banana'") as refused:
        v.resolve_device("banana", input_name="device=")
    assert refused.value.input == "device="


# ---------------------------------------------------------------------------- model source


def test_existing_sources_are_classified(tiny_model_dir, monkeypatch):
    assert v.check_model_source("toy/moe-16x2") == "toy"
    assert v.check_model_source(tiny_model_dir("olmoe")) == "local"
    for variable in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(variable, raising=False)
    with socket.socket() as hub:  # a hub that accepts connections
        hub.bind(("127.0.0.1", 0))
        hub.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.getsockname()[1]}")
        assert v.check_model_source("allenai/OLMoE-1B-7B-0924", offline=False) == "hub"
    assert v.check_model_source(torch.nn.Linear(2, 2)) == "object"


def test_an_uncached_hub_id_is_refused_at_once_when_the_hub_cannot_be_reached(monkeypatch, tmp_path):
    for variable in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(v.ModelSourceError) as refused:
        v.check_model_source("someone/never-downloaded-moe", offline=False)
    assert "the hub cannot be reached" in one_line(refused, "--model")


@pytest.mark.parametrize("spec", ["/no/such/model", "./missing-model", "~/nope/", "a/b/c", "C:\\models\\x"])
def test_a_path_that_does_not_exist_is_refused(spec):
    with pytest.raises(v.ModelSourceError) as refused:
        v.check_model_source(spec, offline=False)
    assert "does not exist" in one_line(refused, "--model")


@pytest.mark.parametrize("spec", ["not a model", "org/na me", "bad--name", "-leading", "x" * 200])
def test_a_name_that_is_neither_a_folder_nor_a_hub_id_is_refused(spec):
    with pytest.raises(v.ModelSourceError) as refused:
        v.check_model_source(spec, offline=False)
    assert "neither an existing local folder nor a valid hub id" in one_line(refused, "--model")


def test_an_uncached_hub_id_offline_is_refused_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(v.ModelSourceError) as refused:
        v.check_model_source("someone/never-downloaded-moe")
    assert "not in the Hugging Face cache" in one_line(refused, "--model")


def test_a_file_or_a_folder_without_config_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(v.ModelSourceError, match="is a file"):
        v.check_model_source(tmp_path / "weights.bin")
    with pytest.raises(v.ModelSourceError, match="without config.json"):
        v.check_model_source(tmp_path)


def test_unknown_and_untrained_toys_are_refused(monkeypatch, tmp_path):
    with pytest.raises(v.ModelSourceError) as refused:
        v.check_model_source("toy/moe-999x9")
    assert "accepted: toy/" in one_line(refused, "--model")
    from tl_moe.zoo import registry

    monkeypatch.setattr(registry, "CHECKPOINT_ROOT", tmp_path)
    with pytest.raises(v.ModelSourceError, match="tl-moe zoo train toy/moe-16x2"):
        v.check_model_source("toy/moe-16x2")


def test_an_moe_given_as_the_dense_baseline_is_refused(tiny_model_dir):
    with pytest.raises(v.ModelSourceError) as refused:
        v.check_model_source("toy/moe-16x2", expect_moe=False, input_name="--dense-baseline")
    assert "is an MoE (olmoe); accepted: a dense model" in one_line(refused, "--dense-baseline")
    assert v.check_model_source("toy/dense", expect_moe=False) == "toy"
    with pytest.raises(v.ModelSourceError, match="accepted: an MoE model"):
        v.check_model_source(tiny_model_dir("llama"), expect_moe=True)


def test_a_model_without_experts_is_refused_as_the_moe_before_loading(tmp_path):
    # any architecture can be hooked (experts are discovered), so a model type without an MoE spec
    # is refused for what it is: not an MoE
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(v.ModelSourceError, match="is a dense model \\(bert\\); accepted: an MoE model"):
        v.check_model_source(tmp_path, expect_moe=True)


# ---------------------------------------------------------------------------- output folder


def test_writable_folders_existing_or_not_pass_and_nothing_is_created(tmp_path):
    assert v.check_output_dir(tmp_path) == tmp_path
    assert v.check_output_dir(tmp_path / "new" / "report") == tmp_path / "new" / "report"
    assert not (tmp_path / "new").exists()
    assert list(tmp_path.iterdir()) == []


def test_an_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "report.html").write_text("x")
    with pytest.raises(v.OutputDirError) as refused:
        v.check_output_dir(tmp_path / "report.html")
    assert "is a file, not a folder" in one_line(refused, "--out")
    with pytest.raises(v.OutputDirError) as refused:
        v.check_output_dir(tmp_path / "report.html" / "sub")
    assert "cannot be created" in one_line(refused, "--out")


def test_an_unwritable_out_is_refused(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: simulate a read-only mount instead

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    else:
        locked.chmod(0o500)
    try:
        for target in (locked, locked / "report"):
            with pytest.raises(v.OutputDirError) as refused:
                v.check_output_dir(target)
            assert "Permission denied" in one_line(refused, "--out")
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------------------------- corpus


def corpus_dict():
    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["a b", "c d"], "domain": ["code", "prose"]}),
            "validation": datasets.Dataset.from_dict({"text": [], "domain": []}),
            "test": datasets.Dataset.from_dict({"text": ["", "  "], "domain": ["code", "code"]}),
        }
    )


def test_a_split_with_documents_passes():
    assert len(v.check_corpus_split(corpus_dict(), "train")) == 2
    assert len(v.check_corpus_split(corpus_dict()["train"])) == 2


@pytest.mark.parametrize("split", ["validation", "test"])
def test_a_split_without_documents_is_refused(split):
    with pytest.raises(v.CorpusSplitError) as refused:
        v.check_corpus_split(corpus_dict(), split)
    assert f"--split {split!r} has no documents" in one_line(refused, "--split")


def test_a_missing_split_or_text_column_is_refused():
    with pytest.raises(v.CorpusSplitError, match="accepted: train, validation, test"):
        v.check_corpus_split(corpus_dict(), "dev")
    with pytest.raises(v.CorpusSplitError, match="no 'text' column"):
        v.check_corpus_split(datasets.Dataset.from_dict({"body": ["x"]}))


def test_domain_coverage_flags_a_single_domain_without_raising():
    two = v.domain_coverage(corpus_dict()["train"])
    assert two.usable and two.warning is None and two.documents == {"code": 1, "prose": 1}
    single = v.domain_coverage(
        datasets.Dataset.from_dict({"text": ["x", "y", ""], "domain": ["a", "a", "b"]})
    )
    assert not single.usable and single.documents == {"a": 2, "b": 0}
    assert "one domain ('a')" in single.warning and "\n" not in single.warning
    none = v.domain_coverage(datasets.Dataset.from_dict({"text": ["x"]}))
    assert not none.usable and "no 'domain' column" in none.warning
    labelled = datasets.Dataset.from_dict(
        {"text": ["x", "y"], "domain": [0, 1]},
        features=datasets.Features(
            {"text": datasets.Value("string"), "domain": datasets.ClassLabel(names=["m", "n"])}
        ),
    )
    assert v.domain_coverage(labelled).documents == {"m": 1, "n": 1}


# ----------------------------------------------------------------------------------- layers


def test_layers_are_checked_against_the_sparse_layers():
    assert v.check_layers(None, (1, 3)) == (1, 3)
    assert v.check_layers([3, 1, 3], (1, 3)) == (1, 3)
    with pytest.raises(v.LayersError) as refused:
        v.check_layers([7], (1, 3))
    assert "[7] are not among the model's layers [1, 3]" in one_line(refused, "--probe-layers")
    with pytest.raises(v.LayersError, match="not layer numbers"):
        v.check_layers(["a", 1], (1, 3))
    with pytest.raises(v.LayersError, match="is empty"):
        v.check_layers([], (1, 3))


# ------------------------------------------------------------------------------ run options


def refused_option(**settings) -> str:
    """The one-line message of ``RunOptions(**settings)``, which must refuse (options check themselves)."""
    from tl_moe.errors import InputError
    from tl_moe.pipeline import RunOptions

    with pytest.raises(InputError) as refused:
        RunOptions(**settings)
    message = str(refused.value)
    assert "\n" not in message and len(message) < 300, message
    return message


@pytest.mark.parametrize(
    ("settings", "flag", "accepted"),
    [
        ({"seed": -1}, "--seed", "from 0 to 2147483647"),
        ({"seed": 2**40}, "--seed", "from 0 to 2147483647"),
        ({"seed": 1.5}, "--seed", "from 0 to 2147483647"),
        ({"fdr": float("nan")}, "--fdr", "a number in (0, 1)"),
        ({"fdr": 0.0}, "--fdr", "a number in (0, 1)"),
        ({"fdr": 1.0}, "--fdr", "a number in (0, 1)"),
        ({"fdr": -0.1}, "--fdr", "a number in (0, 1)"),
        ({"selection_fraction": float("nan")}, "--selection-fraction", "a number in (0, 1)"),
        ({"probe_ks": (1, -1)}, "--probe-ks", "positive integers"),
        ({"probe_ks": (0, 4)}, "--probe-ks", "positive integers"),
        ({"probe_ks": ()}, "--probe-ks", "positive integers"),
        ({"probe_ks": (1, 2.5)}, "--probe-ks", "positive integers"),
        ({"max_tokens": 1.5}, "--max-tokens", "an integer of at least 1000"),
        ({"max_tokens": "100"}, "--max-tokens", "an integer of at least 1000"),
        ({"n_token_groups": 0}, "--n-token-groups", "a positive integer"),
        ({"explain_timeout": float("nan")}, "--explain-timeout", "a positive number"),
        ({"model": None}, "--model", "must name a model"),
    ],
)
def test_run_options_refuse_values_no_run_can_use(settings, flag, accepted):
    message = refused_option(**settings)
    assert message.startswith(flag) and accepted in message


@pytest.mark.parametrize(
    ("factors", "named"),
    [((1.0,), "[1.0]"), ((0.5, -2.0), "[-2.0]"), ((0.0, 2.0), "[0.0]"), ((2.0, 0.5, 2.0), "repeats [2.0]")],
)
def test_reweight_factors_must_be_positive_distinct_and_not_one(factors, named):
    message = refused_option(reweight_factors=factors)
    assert message.startswith("--reweight-factors") and named in message
    assert "positive numbers other than 1" in message


def test_good_run_options_pass_and_the_command_line_shares_the_rules():
    from tl_moe.cli import build_parser
    from tl_moe.errors import InputError
    from tl_moe.pipeline import RunOptions
    from tl_moe.pipeline.options import SEED_MAX, options_from_arguments

    kept = RunOptions(seed=SEED_MAX, fdr=0.2, probe_ks=(1, 3), reweight_factors=(0.5, 3.0))
    assert (kept.seed, kept.fdr, kept.probe_ks, kept.reweight_factors) == (SEED_MAX, 0.2, (1, 3), (0.5, 3.0))
    assert RunOptions(analyses="domains, drivers").analyses == ("domains", "drivers")
    parser = build_parser()
    for argv, flag in (
        (["--seed", "-1"], "--seed"),
        (["--reweight-factors", "1"], "--reweight-factors"),
        (["--probe-ks", "0,4"], "--probe-ks"),
        (["--fdr", "nan"], "--fdr"),
    ):
        with pytest.raises(InputError, match=flag):
            options_from_arguments(parser.parse_args(["analyze", *argv]))


def test_more_token_groups_than_the_vocabulary_is_refused():
    assert v.check_n_token_groups(TOY.d_vocab, TOY.d_vocab) == TOY.d_vocab
    with pytest.raises(v.BudgetError) as refused:
        v.check_n_token_groups(TOY.d_vocab + 1, TOY.d_vocab, "toy")
    message = one_line(refused, "--n-token-groups")
    assert (
        f"the {TOY.d_vocab} tokens of toy's vocabulary" in message
        and f"accepted: 1 to {TOY.d_vocab}" in message
    )


def test_analyses_given_as_one_string_are_names_not_characters(monkeypatch):
    from tl_moe.pipeline import RunOptions, runner
    from tl_moe.pipeline.registry import resolve

    def names(analyses):
        return [analysis.name for analysis in runner._chosen_analyses(RunOptions(), analyses)]

    assert names("probing") == [a.name for a in resolve(("probing",))] == names(["probing"])
    assert names("domains, specialization") == names(["domains", "specialization"])
    assert "p" not in names("probing")
    given = {}
    monkeypatch.setattr(runner, "run", lambda options, **kwargs: given.update(kwargs))
    runner.analyze("toy/moe-4x2", analyses="probing")
    assert names(given["analyses"]) == names(["probing"])


# ------------------------------------------------------------- defaults fitted to small models


def test_only_defaults_the_user_left_are_fitted_to_the_limits():
    from tl_moe.pipeline import RunOptions
    from tl_moe.pipeline.options import fit_defaults, is_default
    from tl_moe.pipeline.protocol import OptionLimit

    limits = {"probe_ks": OptionLimit(32, "32 neurons"), "n_drivers": OptionLimit(2, "4 experts")}
    left = RunOptions()
    assert is_default(left, "probe_ks") and is_default(left, "n_drivers")
    fitted, changes = fit_defaults(left, limits)
    assert fitted.probe_ks == (1, 2, 4, 8, 16, 32) and fitted.n_drivers == 2
    assert changes["probe_ks"] == {
        "default": [1, 2, 4, 8, 16, 32, 64],
        "used": [1, 2, 4, 8, 16, 32],
        "because": "32 neurons",
    }
    assert changes["n_drivers"] == {"default": 8, "used": 2, "because": "4 experts"}
    assert not is_default(fitted, "probe_ks") and not is_default(fitted, "n_drivers")
    # an explicit value equal to the default is the user's: never changed
    given = RunOptions(probe_ks=(1, 2, 4, 8, 16, 32, 64), n_drivers=8)
    assert given == left and not is_default(given, "probe_ks") and not is_default(given, "n_drivers")
    assert fit_defaults(given, limits) == (given, {})
    # a default the model allows is kept as it is (planted "no change")
    roomy = {"probe_ks": OptionLimit(128, "128 neurons"), "n_drivers": OptionLimit(32, "64 experts")}
    assert fit_defaults(left, roomy) == (left, {})
    assert is_default(left.replace(seed=3), "probe_ks")  # copies keep the mark


SMALL = MoEConfig(
    "mixtral",
    n_layers=2,
    d_model=32,
    d_vocab=96,
    n_heads=4,
    num_experts=4,
    experts_per_token=2,
    d_expert=16,
    sparse_layers=(0, 1),
    max_position_embeddings=64,
)


def test_the_run_fits_left_defaults_to_a_small_model_and_refuses_explicit_ones():
    from tl_moe.pipeline import RunOptions
    from tl_moe.pipeline.context import RunContext
    from tl_moe.pipeline.runner import _fit_defaults
    from tl_moe.pipeline.sections.drivers import Drivers
    from tl_moe.pipeline.sections.probing import Probing

    run = RunContext(RunOptions(model="small", dense_baseline=None), configs={"small": SMALL})
    with pytest.warns(UserWarning) as notes:
        changes = _fit_defaults(run, [Probing(), Drivers()])
    assert len(notes) == 1
    note = str(notes[0].message)
    assert "\n" not in note and "--probe-ks 1,2,4,8,16 instead of the default 1,2,4,8,16,32,64" in note
    assert "--n-drivers 4 instead of the default 8" in note and "half of 8 experts" in note
    assert run.options.probe_ks == (1, 2, 4, 8, 16) and run.options.n_drivers == 4
    assert changes["n_drivers"]["used"] == 4 and changes["probe_ks"]["used"] == [1, 2, 4, 8, 16]
    Probing().check(run)  # the fitted sizes pass the check that refuses explicit ones
    explicit = RunContext(
        RunOptions(model="small", dense_baseline=None, probe_ks=(1, 2, 4, 8, 16, 32, 64), n_drivers=8),
        configs={"small": SMALL},
    )
    assert _fit_defaults(explicit, [Probing(), Drivers()]) == {}
    with pytest.raises(v.ProbeSizeError) as refused:
        Probing().check(explicit)
    assert "accepted: integers from 1 to 16" in one_line(refused, "--probe-ks")
    with pytest.raises(v.BudgetError) as refused:
        v.check_n_drivers(explicit.options.n_drivers, len(SMALL.sparse_layers), SMALL.num_experts)
    assert "accepted: 1 to 4" in one_line(refused, "--n-drivers")


def test_a_run_on_a_small_model_records_the_fitted_defaults(tiny_model_dir, tmp_path):
    import datasets

    from tl_moe.pipeline import RunOptions, run

    generator = torch.Generator().manual_seed(1)
    texts = [
        " ".join(f"w{w}" for w in torch.randint(3, 90, (10,), generator=generator).tolist())
        for _ in range(48)
    ]
    corpus = datasets.Dataset.from_dict({"text": texts, "domain": ["a", "b", "c"] * 16})
    options = RunOptions(
        model=str(tiny_model_dir("mixtral")),  # 4 experts x 2 sparse layers of 16 neurons
        dense_baseline=None,
        analyses=("drivers",),
        out=tmp_path,
        max_tokens=1000,
        driver_tokens=1000,
        seq_len=16,
        batch_size=8,
        n_token_groups=4,
        bootstrap_resamples=50,
        progress=False,
    )
    with pytest.warns(UserWarning, match="--n-drivers 4 instead of the default 8"):
        results = run(options, dataset=corpus)
    assert results.options.n_drivers == 4 and int(results["drivers"].experts["driver"].sum()) == 4
    metadata = json.loads((tmp_path / "results.json").read_text())["metadata"]
    assert metadata["options"]["n_drivers"] == 4
    assert metadata["fitted_defaults"]["n_drivers"]["default"] == 8
    assert "probe_ks" not in metadata["fitted_defaults"]  # probing did not run: nothing to fit
