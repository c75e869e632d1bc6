"""Re-weighting and steering experts: a factor of 1 is an exact no-op, edited losses equal separate
``run_with_hooks`` forwards, selection never sees held-out documents, a planted under-weighted expert
is found and restored on held-out text while matched random experts are not."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

import tl_moe
from tl_moe.analysis import reweighting as reweighting_module
from tl_moe.analysis.drivers import HALVES_KEY
from tl_moe.analysis.edit_windows import Windows, by_document, edit_losses, ratio_intervals, routed_counts
from tl_moe.analysis.reweighting import matched_random_sets, reweighting_study, scale_edit
from tl_moe.analysis.splits import document_split
from tl_moe.analysis.steering import steering_study, switch_edit
from tl_moe.collect.interventional import run_interventions
from tl_moe.errors import InputError
from tl_moe.models.hook_names import get_act_name
from tl_moe.models.interventions import activate_experts, remove_experts, scale_expert_weights
from tl_moe.pipeline.sections.reweighting import held_out_windows

PLANTED_LAYER, PLANTED_EXPERT, SHRINK = 1, 3, 0.5


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """The tiny OLMoE with a sharpened unembedding (logits far from uniform, so edits move the loss)."""
    bridge = tl_moe.load(tiny_model_dir("olmoe"), device="cpu")
    with torch.no_grad():
        bridge.original_model.lm_head.weight.mul_(20.0)
    return bridge


def _windows(n: int, length: int, seed: int = 0, ragged: bool = True) -> Windows:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 96, (n, length), generator=generator)
    lengths = (
        torch.randint(length // 2, length + 1, (n,), generator=generator)
        if ragged
        else torch.full((n,), length)
    )
    mask = torch.arange(length)[None] < lengths[:, None]
    ids = ids * mask
    return Windows(ids, mask, torch.arange(n), tuple("ab"[i % 2] for i in range(n)))


def _hooked_loss_sums(model, windows: Windows, hooks) -> torch.Tensor:
    """Σ per window of the next-token loss at real positions, from one plain ``run_with_hooks``."""
    mask = windows.attention_mask
    with torch.no_grad():
        logits = model.run_with_hooks(windows.input_ids, attention_mask=mask.long(), fwd_hooks=hooks)
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].double().transpose(1, 2), windows.input_ids[:, 1:], reduction="none"
    )
    valid = mask[:, :-1] & mask[:, 1:]
    return (loss * valid).sum(-1)


def test_a_factor_of_one_changes_nothing_exactly(model):
    windows = _windows(12, 16)
    experts = ((0, 1), (0, 6), (1, 3))
    losses = edit_losses(model, windows, [scale_edit(experts, 1.0)], batch_size=5)
    assert torch.equal(losses.change, torch.zeros_like(losses.change))
    effects = run_interventions(
        model, windows.input_ids, [scale_edit(experts, 1.0)], attention_mask=windows.attention_mask
    )
    assert torch.equal(effects.loss[0], effects.clean_loss) and not bool(effects.changed.any())
    study = reweighting_study(
        model,
        windows.select(document_split(windows.doc, key=HALVES_KEY) == 0),
        windows.select(document_split(windows.doc, key=HALVES_KEY) == 1),
        {"a": {"s": experts}, "b": {"s": experts}},
        factors=(1.0,),
        n_draws=2,
        n_resamples=50,
    )
    assert (study.gains["loss change"] == 0).all() and (study.matrix["loss change"] == 0).all()
    assert (study.grid["loss change (selection)"] == 0).all()


def test_edited_losses_equal_separate_run_with_hooks_forwards(model):
    windows = _windows(10, 16, seed=3)
    clean = _hooked_loss_sums(model, windows, [])
    scale = ((0, 2), (1, 3), (1, 5))
    cases = [
        (
            scale_edit(scale, 1.7),
            scale_expert_weights(model, 0, [2], 1.7) + scale_expert_weights(model, 1, [3, 5], 1.7),
        ),
        (scale_edit(((1, 4),), 0.5), scale_expert_weights(model, 1, [4], 0.5)),
        (
            switch_edit(((0, 1), (1, 6)), "on"),
            activate_experts(model, 0, [1]) + activate_experts(model, 1, [6]),
        ),
        (switch_edit(((1, 2),), "off"), remove_experts(model, 1, [2])),
    ]
    losses = edit_losses(model, windows, [edit for edit, _ in cases], batch_size=4)
    assert torch.equal(losses.count, (windows.attention_mask[:, :-1] & windows.attention_mask[:, 1:]).sum(-1))
    for row, (_, hooks) in enumerate(cases):
        reference = _hooked_loss_sums(model, windows, hooks) - clean
        assert torch.allclose(losses.change[row], reference, atol=1e-5), row
        assert not torch.allclose(
            reference, torch.zeros_like(reference), atol=1e-4
        )  # each edit moves the loss


def test_switching_on_puts_the_expert_next_to_the_tokens_own_best(model):
    windows = _windows(4, 16, ragged=False)
    names = [get_act_name(kind, 1) for kind in ("router_logits", "topk_indices")]
    cache = {}

    def keep(tensor, hook):
        cache.setdefault(hook.name, []).append(tensor.reshape(-1, tensor.shape[-1]).clone())
        return tensor

    model.run_with_hooks(windows.input_ids, fwd_hooks=[(n, keep) for n in names])
    model.run_with_hooks(
        windows.input_ids, fwd_hooks=activate_experts(model, 1, [5]) + [(n, keep) for n in names]
    )
    clean_logits, edited_indices = cache[names[0]][0], cache[names[1]][1]
    best_other = clean_logits.masked_fill(torch.arange(8) == 5, -torch.inf).argmax(-1)
    assert (edited_indices == 5).any(-1).all()  # every token selects the activated expert
    assert torch.equal(
        torch.sort(edited_indices, -1).values,
        torch.sort(torch.stack([best_other, torch.full_like(best_other, 5)], -1), -1).values,
    )
    with pytest.raises(ValueError, match="Cannot activate 3"):
        activate_experts(model, 1, [1, 2, 3])


def test_matched_random_sets_come_from_the_closest_rates_of_the_same_layer():
    rates = {0: np.array([0.10, 0.11, 0.30, 0.12, 0.50]), 3: np.array([0.2, 0.9, 0.21, 0.8, 0.22])}
    chosen = ((0, 0), (3, 1))
    closest = matched_random_sets(chosen, rates, 3, pool=1)
    assert closest == [((0, 1), (3, 3))] * 3  # pool 1: the single closest non-chosen expert
    for draw in matched_random_sets(chosen, rates, 40, pool=3, seed=1):
        (layer0, e0), (layer3, e3) = draw
        assert layer0 == 0 and e0 in {1, 3, 2} and layer3 == 3 and e3 in {3, 4, 2}
    drawn = {draw for draw in matched_random_sets(chosen, rates, 40, pool=3, seed=1)}
    assert len(drawn) > 3  # really random within the pool


def test_document_bootstrap_intervals_match_scipy():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(0)
    counts = rng.integers(5, 30, size=40).astype(float)
    sums = rng.normal(-0.1, 0.3, size=40) * counts
    (interval,) = ratio_intervals(sums[None], counts, n_resamples=4000, seed=1)
    reference = bootstrap(
        (sums, counts),
        lambda s, c: s.sum() / c.sum(),
        paired=True,
        vectorized=False,
        n_resamples=4000,
        method="percentile",
        random_state=2,
    ).confidence_interval
    assert interval.estimate == pytest.approx(sums.sum() / counts.sum())
    assert interval.low == pytest.approx(reference.low, abs=0.02) and interval.high == pytest.approx(
        reference.high, abs=0.02
    )
    (few,) = ratio_intervals(sums[None, :5], counts[:5])
    assert not few.available and np.isnan(few.low)


@pytest.fixture(scope="module")
def tagged_corpus():
    """Documents whose text names their own row, two domains."""
    texts = [" ".join(f"w{(row * 7 + i) % 90 + 3}" for i in range(6 + row % 9)) for row in range(80)]
    return datasets.Dataset.from_dict({"text": texts, "domain": ["a", "b"] * 40, "row": list(range(80))})


def test_selection_never_sees_evaluation_documents(model, tagged_corpus, monkeypatch):
    selection, evaluation = held_out_windows(
        tagged_corpus, model.tokenizer, seq_len=16, tokens_per_group=10_000
    )
    half = document_split(torch.arange(len(tagged_corpus)), key=HALVES_KEY)
    assert set(selection.doc.tolist()) == set(torch.nonzero(half == 0).flatten().tolist())
    assert set(evaluation.doc.tolist()) == set(torch.nonzero(half == 1).flatten().tolist())
    for windows in (selection, evaluation):  # the windows of a row hold that row's tokens, in order
        for row in set(windows.doc.tolist()):
            pieces = [
                w[m][1:]
                for w, m, d in zip(windows.input_ids, windows.attention_mask, windows.doc, strict=True)
                if d == row
            ]
            expected = model.tokenizer(tagged_corpus[row]["text"], add_special_tokens=False)["input_ids"]
            assert torch.cat(pieces).tolist() == expected[: sum(len(p) for p in pieces)]
    seen = []
    original = reweighting_module.edit_losses

    def spy(model, windows, edits, **kwargs):
        seen.append((kwargs.get("description", ""), set(windows.doc.tolist())))
        return original(model, windows, edits, **kwargs)

    monkeypatch.setattr(reweighting_module, "edit_losses", spy)
    candidates = {"a": {"x": ((0, 1),), "y": ((1, 2),)}, "b": {"x": ((0, 4),)}}
    study = reweighting_study(model, selection, evaluation, candidates, n_draws=2, n_resamples=50)
    grid_calls = [docs for name, docs in seen if "grid" in name]
    assert grid_calls and all(docs <= study.selection_docs for docs in grid_calls)
    assert all(docs <= study.evaluation_docs for name, docs in seen if "held out" in name)
    assert not study.selection_docs & study.evaluation_docs
    # scrambling every evaluation document changes no selection outcome
    scrambled = Windows(
        torch.randint(3, 96, evaluation.input_ids.shape, generator=torch.Generator().manual_seed(9))
        * evaluation.attention_mask,
        evaluation.attention_mask,
        evaluation.doc,
        evaluation.group,
    )
    again = reweighting_study(model, selection, scrambled, candidates, n_draws=2, n_resamples=50)
    assert again.grid.equals(study.grid) and again.controls == study.controls
    assert again.gains[["expert set", "factor"]].equals(study.gains[["expert set", "factor"]])
    steer = steering_study(model, selection, evaluation, ("a", "b"), n_draws=2, n_resamples=50)
    steer_again = steering_study(model, selection, scrambled, ("a", "b"), n_draws=2, n_resamples=50)
    columns = ["experts of", "layer", "expert", "rate difference a − b (selection)"]
    assert steer.detected[columns].equals(steer_again.detected[columns])
    with pytest.raises(ValueError, match="share documents"):
        reweighting_study(model, selection, selection, candidates)


def test_steering_detects_the_largest_routing_rate_differences(model, tagged_corpus):
    selection, evaluation = held_out_windows(
        tagged_corpus, model.tokenizer, seq_len=16, tokens_per_group=10_000
    )
    study = steering_study(model, selection, evaluation, ("a", "b"), n_draws=2, n_resamples=50)
    routed = routed_counts(model, selection, (0, 1)).double()  # [layer, expert, window]
    is_a = torch.tensor([g == "a" for g in selection.group])
    tokens = selection.attention_mask.sum(-1).double()
    delta = routed[..., is_a].sum(-1) / tokens[is_a].sum() - routed[..., ~is_a].sum(-1) / tokens[~is_a].sum()
    for side, sign in (("a", 1), ("b", -1)):
        rows = study.detected[study.detected["experts of"] == side]
        assert rows["expert"].tolist() == [int((sign * delta[layer]).argmax()) for layer in (0, 1)]
        assert np.allclose(
            rows["rate difference a − b (selection)"],
            delta[rows["layer"].tolist(), rows["expert"].tolist()].numpy(),
        )
    assert set(study.switches["switch"]) == {"on", "off"} and len(study.switches) == 8


@pytest.fixture(scope="module")
def planted(tiny_model_dir):
    """Documents of domain ``a`` are sampled from a model M; domain ``b`` from M with one expert's
    down-projection halved (M'). The study runs on M': scaling that expert's weight by 2 gives back M
    exactly, which must lower the loss on ``a`` (text of M) and raise it on ``b`` (text of M')."""
    bridge = tl_moe.load(tiny_model_dir("olmoe"), device="cpu")
    hf = bridge.original_model
    experts = hf.model.layers[PLANTED_LAYER].mlp.experts
    with torch.no_grad():
        hf.lm_head.weight.mul_(50.0)
        experts.down_proj[PLANTED_EXPERT] *= 100.0  # an expert that matters
    generator = torch.Generator().manual_seed(0)

    def sample(n: int, length: int) -> torch.Tensor:
        ids = torch.randint(3, 96, (n, 1), generator=generator)
        with torch.no_grad():
            for _ in range(length - 1):
                probs = torch.softmax(hf(ids).logits[:, -1].double(), -1)
                ids = torch.cat([ids, torch.multinomial(probs, 1, generator=generator)], 1)
        return ids

    a = sample(80, 32)
    with torch.no_grad():
        experts.down_proj[PLANTED_EXPERT] *= SHRINK
    b = sample(80, 32)
    ids = torch.stack([x for pair in zip(a, b, strict=True) for x in pair])
    windows = Windows(ids, torch.ones_like(ids, dtype=torch.bool), torch.arange(len(ids)), tuple("ab" * 80))
    half = document_split(windows.doc, key=HALVES_KEY)
    return bridge, windows.select(half == 0), windows.select(half == 1)


def test_a_planted_underweighted_expert_is_chosen_and_helps_held_out(planted):
    model, selection, evaluation = planted
    candidates = {"a": {"planted": ((PLANTED_LAYER, PLANTED_EXPERT),), "other": ((PLANTED_LAYER, 5),)}}
    study = reweighting_study(model, selection, evaluation, candidates, n_draws=4, n_resamples=1000)
    row = study.gains.set_index("domain").loc["a"]
    assert row["expert set"] == "planted" and row["factor"] > 1
    assert row["loss change ci high"] < 0  # a held-out gain whose interval excludes 0
    control = (row["control loss change ci low"], row["control loss change ci high"])
    assert control[0] <= 0 <= control[1] or abs(row["control loss change"]) < abs(row["loss change"]) / 5
    assert row["chosen − control ci high"] < 0
    assert row["documents"] >= 30  # enough held-out documents for an interval (MIN_DOCUMENTS)
    assert row["improved (Holm)"] and row["Holm ci high"] < 0 and row["Holm level"] == pytest.approx(0.95)
    assert row["documents"] == len(set(evaluation.doc[[g == "a" for g in evaluation.group]].tolist()))
    matrix = study.matrix.set_index(["re-weighted domain", "evaluated on"])["loss change"]
    assert matrix[("a", "b")] > 0  # restoring M costs on text of M'
    # the estimate is the ratio of per-document sums recomputed from separate hooked forwards
    held = evaluation.of_group("a")
    hooks = scale_expert_weights(model, PLANTED_LAYER, [PLANTED_EXPERT], float(row["factor"]))
    change = _hooked_loss_sums(model, held, hooks) - _hooked_loss_sums(model, held, [])
    sums, _ = by_document(change, held.doc)
    counts, _ = by_document(held.attention_mask.sum(-1) - 1, held.doc)
    assert row["loss change"] == pytest.approx(sums.sum() / counts.sum(), abs=1e-6)


def test_the_analysis_runs_through_the_pipeline_and_refuses_bad_options(
    tiny_run_options, tagged_corpus, tmp_path
):
    import json

    from tl_moe.pipeline import run

    options = tiny_run_options(
        ("reweighting",),
        reweight_tokens=400,
        reweight_draws=2,
        bootstrap_resamples=200,
        permutations=99,
    )
    results = run(options, dataset=tagged_corpus)
    assert {"domains", "drivers", "reweighting"} <= set(results.results)
    result = results["reweighting"]
    assert set(result.study.gains["domain"]) == {"a", "b"}
    saved = json.loads((tmp_path / "results.json").read_text())["sections"]["reweighting"]
    headline = saved["metrics"]["a | chosen − control"]
    assert saved["metrics"]["a | chosen"].split(" × ")[0] in {
        "domain experts",
        "driver experts",
        "domain + driver experts",
    }
    assert set(headline) == {"estimate", "ci_low", "ci_high", "n", "interval_method", "draws_df"}
    assert headline["n"] >= 10
    assert "draws_df" not in saved["metrics"]["a | loss change"]  # the chosen edit does not use the draws
    assert len(saved["matrix"]) == 4 and saved["steering"]
    for name in ("reweighting_gains", "reweighting_matrix", "steering_switches"):
        assert (tmp_path / "figures" / f"{name}.png").exists()
    with pytest.raises(InputError, match="--steer-contrast names unknown domains"):
        run(options.replace(steer_contrast=("a", "zz")), dataset=tagged_corpus)
    with pytest.raises(InputError, match="--reweight-factors"):
        run(options.replace(reweight_factors=(1.0, float("inf"))), dataset=tagged_corpus)


def test_steering_can_contrast_two_languages_of_one_domain(model, tagged_corpus):
    from tl_moe.pipeline import RunOptions
    from tl_moe.pipeline.context import RunContext
    from tl_moe.pipeline.sections.reweighting import Reweighting

    corpus = tagged_corpus.add_column("language", [["x", "x", "y", "y"][row % 4] for row in range(80)])
    options = RunOptions(
        model="tiny",
        seq_len=16,
        reweight_tokens=10_000,
        reweight_draws=2,
        bootstrap_resamples=50,
        steer_contrast=("a:x", "y"),
        progress=False,
    )
    run = RunContext(options, dataset=corpus, models={"tiny": model})
    Reweighting().check(run)
    method = Reweighting().method(run)
    study = method.steering(model, corpus, None, None, seq_len=16, batch_size=16)
    assert study.contrast == ("x", "y")
    rows_of_a = {row for row in range(80) if corpus[row]["domain"] == "a"}
    assert study.selection_docs | study.evaluation_docs <= rows_of_a
    assert {corpus[row]["language"] for row in study.evaluation_docs} == {"x", "y"}
    with pytest.raises(InputError, match="needs domain 'zz'"):
        Reweighting().check(RunContext(options.replace(steer_contrast=("zz:x", "y")), dataset=corpus))


def _gain_row(domain, change, low, high, versus, documents, unavailable=""):
    return {
        "domain": domain,
        "expert set": "driver experts",
        "factor": 1.25,
        "loss change (selection)": -0.01,
        "loss change": change,
        "loss change ci low": low,
        "loss change ci high": high,
        "chosen − control": versus,
        "Holm ci low": np.nan if unavailable else versus - 0.01,
        "Holm ci high": np.nan if unavailable else versus + 0.01,
        "Holm level": np.nan if unavailable else 0.975,
        "p (Holm)": np.nan if unavailable else 0.4,
        "improved (Holm)": False,
        "worse (Holm)": False,
        "Holm unavailable": unavailable,
        "documents": documents,
    }


def test_the_reweighting_finding_shows_each_domains_absolute_change_and_says_when_it_is_an_increase():
    """Planted rows: one domain whose chosen re-weighting raised held-out loss (interval above 0) while
    not differing from its control, one that lowered it, one not separated from 0, one untested."""
    import pandas as pd

    from tl_moe.pipeline.results.reweighting_findings import reweighting_finding

    gains = pd.DataFrame(
        [
            _gain_row("biomedical", 0.0103, 0.0033, 0.0169, 0.0035, 40),
            _gain_row("math", -0.02, -0.03, -0.01, -0.001, 35),
            _gain_row("prose", 0.002, -0.001, 0.005, 0.0, 31),
            _gain_row(
                "c", 0.0043, np.nan, np.nan, 0.0043, 8, "8 documents; a document-level interval needs 30"
            ),
        ]
    )
    text = reweighting_finding(gains)
    assert "absolute change +0.0103 [+0.0033, +0.0169]: an increase (held-out loss worse" in text
    assert "absolute change -0.0200 [-0.0300, -0.0100]: a decrease" in text
    assert (
        "absolute change +0.0020 [-0.0010, +0.0050]: not separated from 0 (the estimate an increase)" in text
    )
    assert "absolute change +0.0043 (no interval: 8 documents; a document-level interval needs 30)" in text
    assert "vs control +0.0035 [-0.0065, +0.0135]" in text  # the control difference stays beside it
    assert text.index("biomedical") < text.index("absolute change +0.0103") < text.index("vs control +0.0035")
    assert all(f"{d} (driver experts × 1.25): absolute change" in text for d in ("math", "prose", "c"))


def test_the_steering_finding_prints_the_paired_difference_or_why_it_has_no_interval():
    import pandas as pd

    from tl_moe.analysis.steering import SteeringStudy
    from tl_moe.pipeline.results.reweighting_findings import steering_finding

    def row(side, switch, documents, interval=True):
        out = {"experts of": side, "switch": switch, "evaluated on": side, "documents": documents}
        for prefix, value in (("loss change", 0.46), ("random sets", 0.19), ("detected − random", 0.27)):
            out[prefix] = value
            out[f"{prefix} ci low"] = value - 0.05 if interval else np.nan
            out[f"{prefix} ci high"] = value + 0.05 if interval else np.nan
        return out

    switches = pd.DataFrame(
        [row("a", "off", 40), row("a", "on", 40), row("b", "off", 12, False), row("b", "on", 12, False)]
    )
    study = SteeringStudy(("a", "b"), pd.DataFrame(), pd.DataFrame(), switches, frozenset(), frozenset())
    text = steering_finding(study)
    assert text.count("paired difference (experts − matched random experts) +0.2700 [+0.2200, +0.3200]") == 2
    assert text.count("+0.2700 (no interval: 12 documents; a document-level interval needs 30)") == 2
    assert "switched off and on" in text


def test_the_default_contrast_picks_the_two_largest_domains_that_can_reach_the_held_out_minimum():
    import datasets

    from tl_moe.analysis.expert_reweighting import ExpertReweighting, held_out_capacity, steering_contrast
    from tl_moe.pipeline.results.reweighting_findings import steering_testability, untestable

    # the default corpus's split: only biomedical can reach 30 held-out documents
    sizes = {"legal": 7, "python": 9, "c": 12, "prose": 20, "chat": 35, "math": 54, "biomedical": 128}
    domains = [d for d, n in sizes.items() for _ in range(n)]
    capacity = held_out_capacity(domains)
    halves = document_split(torch.arange(len(domains)), key=HALVES_KEY).tolist()
    for d, n in sizes.items():  # recount by hand
        assert capacity[d] == (n, sum(h for h, g in zip(halves, domains, strict=True) if g == d))
    assert [d for d, (_, h) in capacity.items() if h >= 30] == ["biomedical"]
    corpus = datasets.Dataset.from_dict({"text": ["x"] * len(domains), "domain": domains})
    assert ExpertReweighting().contrast(corpus)[1:] == ("biomedical", "math")  # fallback: largest
    text = steering_testability({g: capacity[g] for g in ("biomedical", "math")})
    assert "untestable" in text and f"math 54 documents in the split, {capacity['math'][1]} on" in text
    text = untestable(capacity, "re-weighting")
    assert "6 of 7 groups" in text and "legal (7 documents in the split" in text and "biomedical" not in text
    # planted by the split itself: "big" (60 documents, 20 held out) is the largest domain but cannot
    # reach 30; "x" (55, 30 held out) and "y" (54, 31 held out) can, so the contrast skips "big"
    halves = document_split(torch.arange(400), key=HALVES_KEY).tolist()
    wanted = {"big": [40, 20], "x": [25, 30], "y": [23, 31]}
    domains = []
    for side in halves:
        group = next((g for g, left in wanted.items() if left[side] > 0), "filler")
        if group != "filler":
            wanted[group][side] -= 1
        domains.append(group)
    capacity = held_out_capacity(domains)
    assert (capacity["big"], capacity["x"], capacity["y"]) == ((60, 20), (55, 30), (54, 31))
    keep = [i for i, g in enumerate(domains) if g != "filler"]
    assert held_out_capacity([domains[i] for i in keep], keep) == {g: capacity[g] for g in ("big", "x", "y")}
    corpus = datasets.Dataset.from_dict({"text": ["x"] * len(domains), "domain": domains})
    assert steering_contrast(None, corpus["domain"])[1:] == ("filler", "x")
    corpus = corpus.select(keep)  # rows renumbered: the split moves, so recount from this corpus
    capacity = held_out_capacity(list(corpus["domain"]))
    able = sorted((g for g in capacity if capacity[g][1] >= 30), key=lambda g: (-capacity[g][0], g))
    assert steering_contrast(None, corpus["domain"])[1:] == tuple(able[:2])
    assert steering_testability({g: (55, 30) for g in ("x", "y")}) == ""


def test_the_findings_name_the_draw_mean_t_interval_or_the_held_fixed_single_draw():
    import pandas as pd

    from tl_moe.analysis.stats import DRAW_MEAN_METHOD
    from tl_moe.analysis.steering import SteeringStudy
    from tl_moe.pipeline.results.reweighting_findings import reweighting_finding, steering_finding

    def gains(method, draws):
        row = _gain_row("math", -0.02, -0.03, -0.01, -0.001, 35)
        return pd.DataFrame([{**row, "chosen − control interval method": method, "control draws": draws}])

    text = reweighting_finding(gains(DRAW_MEAN_METHOD, 20))
    assert "t interval over the 20 control draws" in text and "Satterthwaite" in text
    assert "two-stage" not in text and "held fixed" not in text
    text = reweighting_finding(gains("percentile", 1))
    assert "one control draw held fixed" in text and "t interval" not in text
    switches = pd.DataFrame(
        [
            {
                "experts of": "a",
                "switch": "off",
                "evaluated on": "a",
                "documents": 40,
                "random draws": 5,
                "detected − random interval method": DRAW_MEAN_METHOD,
                **{p: 0.1 for p in ("loss change", "random sets", "detected − random")},
                **{
                    f"{p} ci {s}": 0.1
                    for p in ("loss change", "random sets", "detected − random")
                    for s in ("low", "high")
                },
            }
        ]
    )
    study = SteeringStudy(("a", "b"), pd.DataFrame(), pd.DataFrame(), switches, frozenset(), frozenset())
    text = steering_finding(study)
    assert "95% t interval over the 5 control draws" in text and "two-stage" not in text
