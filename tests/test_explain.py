

# ---------------------------------------------------------------- the toy MoE through the pipeline


def test_offline_labeler_labels_every_expert_of_the_toy_moe_through_the_pipeline(tmp_path):
    import tl_moe.pipeline  # noqa: F401 (registers the built-in analyses)
    from tl_moe.pipeline import RunOptions, run

    options = RunOptions(analyses=("explain",), max_tokens=30_000, out=tmp_path, progress=False)
    results = run(options)
    explained = results["explain"]
    frame = explained.labeling.frame
    assert len(frame) == 4 * 16  # every expert of every sparse layer has a row
    ok = frame["status"] == "ok"
    assert (frame.loc[ok, "label"] != "").all()  # every expert with enough contexts is labeled
    assert frame.loc[~ok, "status"].str.startswith("too few").all()  # the others say why
    summary = explained.labeling.summary.set_index("layer").loc["all"]
    assert summary["experts scored"] >= 40
    assert summary["chance"] == pytest.approx(2 / 3, abs=0.05)
    assert summary["diff ci low"] > 0  # a label scores higher on its own expert than another's label
    table = explained.label_table()
    assert {"F1", "F1 ci low", "F1 ci high", "shuffled-label F1", "chance F1"} <= set(table.columns)
    lines = (tmp_path / "explain" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 64 and all(json.loads(line)["layer"] in (0, 1, 2, 3) for line in lines)
    page = (tmp_path / "index.html").read_text()
    assert "Automatic expert labels" in page and "explain_f1_histograms" in page
    assert json.loads((tmp_path / "results.json").read_text())["sections"]["explain"]
