"""``tl-moe plan``'s wall-time estimate: computed from measured rates (checked with planted rates and a
planted clock), refused inputs load nothing, and a real small plan prints an estimate with its basis."""

from __future__ import annotations

import pytest

import tl_moe.pipeline  # noqa: F401 (registers the analyses)
from tl_moe.cli import main
from tl_moe.pipeline import RunOptions, calibration
from tl_moe.pipeline.calibration import (
    CALIBRATION_CONCEPTS,
    CALIBRATION_UNITS,
    ProbeWork,
    concept_rates,
    eligible_concepts,
    estimate_times,
    measure_fit_rate,
    measure_pass,
    probe_fit_counts,
)
from tl_moe.pipeline.plan import plan_run


def _clock(*readings: float):
    """A clock that returns ``readings`` in order (the measured interval is their difference)."""
    values = iter(readings)
    return lambda: next(values)


def test_pass_and_probing_seconds_are_the_work_over_the_measured_rates():
    options = RunOptions(
        model="toy/moe-8x2", dense_baseline="toy/dense", analyses=("probing",), max_tokens=6000
    )
    plan = plan_run(options)
    names = [model.name for model in plan.models]
    assert names == ["toy/moe-8x2", "toy/dense", "untrained:toy/moe-8x2"]
    work = [
        ProbeWork(width=64, units=10, rows=300, concepts=5),
        ProbeWork(width=512, units=3, rows=100, concepts=4),
    ]
    estimate = estimate_times(
        plan,
        forward_rates={"toy/moe-8x2": 1500.0, "toy/dense": 3000.0},
        fit_rates={64: 50.0, 512: 20.0},
        probe_work=work,
        rate_rows={64: 100, 512: 200},  # the 64-wide rate was measured on a third of the rows
    )
    assert estimate.pass_seconds == {
        "toy/moe-8x2": 4.0,  # 6000 tokens / 1500 tokens/s
        "toy/dense": 2.0,
        "untrained:toy/moe-8x2": 4.0,  # the untrained null runs at its model's rate
    }
    ks = len(options.probe_ks)
    by_hand = (
        10 * 5 * ks * (300 / 100) / 50.0 + 3 * 4 * ks / 20.0
    )  # fewer rows than measured: no scaling down
    assert estimate.probing_seconds == pytest.approx(by_hand)
    assert estimate.probe_fits == (10 * 5 + 3 * 4) * ks
    assert estimate.total_seconds == pytest.approx(10.0 + by_hand)
    text = estimate.summary()
    assert "an estimate" in text and "1,500 tokens/s" in text and "50 fits/s at 64 neurons" in text


def test_no_probing_no_probing_estimate():
    plan = plan_run(
        RunOptions(model="toy/moe-8x2", dense_baseline=None, analyses=("domains",), max_tokens=3000)
    )
    estimate = estimate_times(plan, {"toy/moe-8x2": 1000.0})
    assert estimate.pass_seconds == {"toy/moe-8x2": 3.0}
    assert estimate.probing_seconds is None and "probing" not in estimate.summary()


def test_probe_work_of_an_moe_alone_is_its_experts_over_two_rounds():
    options = RunOptions(
        model="toy/moe-8x2",
        dense_baseline=None,
        skip_untrained_null=True,
        analyses=("probing",),
        max_tokens=8000,
        probe_layers=(1, 2),
    )
    plan = plan_run(options)
    cfg = plan.models[0].config
    assert cfg.num_experts == 8 and cfg.experts_per_token == 2
    # 2 probed layers x 8 experts, fitted by the paper protocol and the held-out arm (no dense baseline:
    # no permuted-label arm); each expert sees 8000 x 2 / 8 routed tokens.
    assert probe_fit_counts(plan, concepts=10) == [ProbeWork(cfg.d_expert, 2 * 8 * 2, 2000, 10)]
    bounded = plan_run(options.replace(probe_rows_per_class=50))
    assert probe_fit_counts(bounded, concepts=5)[0].rows == 50 * 4 * 5  # N x classes x sides x concepts


def test_rates_are_the_measured_work_over_the_clocked_interval(monkeypatch):
    ks = (1, 2, 4)
    rate = measure_fit_rate(width=16, rows=400, ks=ks, clock=_clock(10.0, 12.0))
    assert rate == CALIBRATION_UNITS * CALIBRATION_CONCEPTS * len(ks) / 2.0
    assert measure_fit_rate(width=2, rows=400, ks=(1, 4), clock=_clock(0.0, 1.0)) == (
        CALIBRATION_UNITS * CALIBRATION_CONCEPTS * 1  # k = 4 > 2 neurons is not fitted
    )

    class Context:
        options = RunOptions(max_tokens=1024)

        def model(self, name):
            import torch

            return torch.nn.Linear(1, 1)

    calls = []
    monkeypatch.setattr("tl_moe.pipeline.runner._collect_model", lambda *args: calls.append(args))
    rate, collected = measure_pass(Context(), "m", ["spec"], clock=_clock(3.0, 7.0))
    assert rate == 1024 / 4.0
    assert calls and calls[0][1:] == ("m", ["spec"], None)  # the pass ran, writing nothing


def test_concepts_probed_are_those_with_enough_expected_positives_and_negatives():
    import torch

    labels = torch.zeros(1000, 4, dtype=torch.bool)
    labels[:10, 0] = True  # rate 0.01
    labels[:500, 1] = True  # 0.5
    labels[:, 2] = True  # 1.0: no negatives
    stored = type("Stored", (), {"labels": labels})()
    rates = concept_rates({"spec": stored, "other": 3})
    assert rates.tolist() == pytest.approx([0.01, 0.5, 1.0, 0.0])
    # A unit seeing 2000 tokens expects 20, 1000, 2000 and 0 positives: with at least 10 of each class,
    # concepts 0 and 1 are probed; with at least 30, concept 1 alone.
    assert eligible_concepts(rates, rows=2000, min_examples=10) == 2
    assert eligible_concepts(rates, rows=2000, min_examples=30) == 1
    assert concept_rates({"spec": object()}) is None


def test_refused_plan_loads_and_calibrates_nothing(monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("calibrated a refused run")

    monkeypatch.setattr(calibration, "calibrate", never)
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "toy/moe-4x2", "--seq-len", "100000"])
    assert exit_info.value.code == 2
    assert "--seq-len 100000" in capsys.readouterr().err


def test_a_small_plan_measures_and_prints_a_time(capsys):
    main(
        [
            "plan",
            "toy/moe-4x2",
            "--analyses",
            "probing",
            "--dense-baseline",
            "none",
            "--skip-untrained-null",
            "--max-tokens",
            "2000",
            "--batch-size",
            "2",
            "--seq-len",
            "64",
            "--threads",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert "It fits in the memory available." in out
    estimate = out[out.index("Estimated wall time") :]
    assert "an estimate, from throughputs measured on this machine" in estimate
    assert "pass toy/moe-4x2: about" in estimate and "tokens/s in a short pass" in estimate
    assert "probing finalize: about" in estimate and "fits/s at" in estimate


def test_no_calibration_prints_memory_alone(capsys):
    main(["plan", "toy/moe-4x2", "--analyses", "domains", "--dense-baseline", "none", "--no-calibration"])
    out = capsys.readouterr().out
    assert "Estimated peak memory" in out and "Estimated wall time" not in out


def _top_k_all_folder(tmp_path):
    """toy/moe-4x2 (4 experts a layer) with its tokens routed to all 4, and its tokenizer beside it."""
    import json
    import shutil

    from tl_moe.zoo.registry import checkpoint_dir
    from tl_moe.zoo.tokenizer import load_tokenizer

    folder = tmp_path / "top_k_all"
    shutil.copytree(checkpoint_dir("toy/moe-4x2"), folder)
    load_tokenizer().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_experts_per_tok": config["num_experts"]}))
    return folder


def _refusal(argv, capsys, *, loads: bool = False) -> str:
    """The one error line ``tl-moe ARGV`` exits with (rc 2), nothing printed on stdout (``loads``: a run that
    loads weights first, whose progress bars precede that line on stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    if loads:
        return lines[-1]
    assert captured.out == ""  # refused before the memory plan is printed
    assert len(lines) == 1, captured.err
    return lines[0]


# (the arguments analyze and plan share, plan's own, a piece of the refusal)
PLAN_REFUSALS = {
    "device banana": (["toy/moe-4x2", "--device", "banana"], [], "--device 'banana'"),
    "device mps": (["toy/moe-4x2", "--device", "mps"], [], "--device 'mps'"),
    "device cuda": (["toy/moe-4x2", "--device", "cuda"], [], "--device 'cuda'"),
    "device cuda:0 without calibration": (
        ["toy/moe-4x2", "--device", "cuda:0"],
        ["--no-calibration"],
        "'cuda:0'",
    ),
    "an MoE as dense baseline": (
        ["toy/moe-4x2", "--dense-baseline", "toy/moe-16x2"],
        [],
        "accepted: a dense model",
    ),
    "a missing model folder": (["/no/such/dir"], [], "does not exist; accepted:"),
    "a dense model": (["toy/dense"], ["--no-calibration"], "is a dense model (olmo); accepted: an MoE model"),
    "a file as --out": (["toy/moe-4x2", "--out", "README.md"], [], "is a file, not a folder"),
}


@pytest.mark.parametrize("case", sorted(PLAN_REFUSALS))
def test_plan_refuses_what_analyze_refuses_in_the_same_line_before_calibrating(
    case, monkeypatch, capsys, tmp_path
):
    import torch

    if case.startswith("device cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if case == "device mps" and torch.backends.mps.is_available():
        pytest.skip("MPS is available here")

    def never(*args, **kwargs):
        raise AssertionError("calibrated a refused run")

    monkeypatch.setattr(calibration, "calibrate", never)
    arguments, plan_only, piece = PLAN_REFUSALS[case]
    if "--out" not in arguments:
        arguments = [*arguments, "--out", str(tmp_path / "out")]
    planned = _refusal(["plan", *arguments, *plan_only, "--threads", "1"], capsys)
    analyzed = _refusal(["analyze", *arguments, "--threads", "1"], capsys)
    assert piece in planned
    assert planned == analyzed
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("analysis", ["drivers", "associations", "reweighting"])
def test_plan_refuses_a_model_whose_tokens_use_every_expert_as_analyze_does(
    analysis, monkeypatch, capsys, tmp_path
):
    def never(*args, **kwargs):
        raise AssertionError("calibrated a refused run")

    monkeypatch.setattr(calibration, "calibrate", never)
    folder = _top_k_all_folder(tmp_path)
    arguments = [
        str(folder),
        "--dense-baseline",
        "none",
        "--analyses",
        analysis,
        "--out",
        str(tmp_path / "out"),
    ]
    planned = _refusal(["plan", *arguments, "--no-calibration"], capsys)
    assert "routes each token to 4 of its 4 experts" in planned
    assert "num_experts_per_tok < num_experts" in planned
    assert _refusal(["plan", *arguments], capsys) == planned  # with calibration too, calibrating nothing
    if analysis == "associations":  # analyze loads the model and corpus before this check: once is enough
        assert (
            _refusal(["analyze", *arguments, "--threads", "1", "--max-tokens", "2000"], capsys, loads=True)
            == planned
        )
