"""The method benchmark's pairing (benchmarks/distill.py): which runs it pairs and what it reports."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import distill  # noqa: E402


def result(method: str, prompt: str, seed: int, iou: float, budget: int = 1) -> dict:
    metrics = dict.fromkeys(distill.METRICS)
    return {"method": method, "prompt": prompt, "seed": seed, "budget": budget, **metrics, "iou": iou}


def test_variant_table_pairs_each_variant_with_every_reference():
    runs = [result("vsd", p, s, 0.5) for p in ("a", "b") for s in (0, 1)]
    runs += [result("l2vsd", p, s, 0.6) for p in ("a", "b") for s in (0, 1)]
    runs += [result("l2vsd-fd", p, s, 0.6 + 0.1 * s) for p in ("a", "b") for s in (0, 1)]
    runs.append(result("l2vsd-fd", "c", 0, 0.9))  # no reference of prompt c: left out, not paired with another
    table = distill.variant_table(runs, lambda r: ["l2vsd", "vsd"] if r["method"] == "l2vsd-fd" else None)
    rows = {tuple(c.strip() for c in line.split("|")[1:5]): line for line in table.splitlines()[2:]}
    assert set(rows) == {("l2vsd-fd", "l2vsd", "1x", "4"), ("l2vsd-fd", "vsd", "1x", "4")}
    iou = distill.METRICS.index("iou")
    cell = lambda row: row.split("|")[5 + iou].strip()  # noqa: E731
    # against l2vsd: differences 0, 0.1, 0, 0.1 -> mean 0.05, standard error 0.0577 / 2
    assert cell(rows[("l2vsd-fd", "l2vsd", "1x", "4")]) == "+0.050 ± 0.029"
    assert cell(rows[("l2vsd-fd", "vsd", "1x", "4")]) == "+0.150 ± 0.029"
    assert distill.variant_table(runs, lambda r: None) == ""


def test_janus_reference_strips_the_longest_tag():
    assert distill.janus_reference({"method": "l2vsd-perpneg-esd"}) == "l2vsd"
    assert distill.janus_reference({"method": "vsd-view"}) == "vsd"
    assert distill.janus_reference({"method": "l2vsd-fd-view30"}) == "l2vsd-fd"  # not "l2vsd-fd-view" + "30"
    assert distill.janus_reference({"method": "l2vsd-fd-view7.5"}) == "l2vsd-fd"
    assert distill.janus_reference({"method": "vsd"}) is None


def test_unknown_janus_variant_is_refused(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["distill.py", "--janus", "--janus-variants", "view,nope"])
    with pytest.raises(SystemExit, match="unknown Janus variant"):
        distill.main()


def test_regime_runs_only_the_chosen_learning_rates_and_etas(monkeypatch, tmp_path):
    jobs = []
    monkeypatch.setattr(distill, "finish", jobs.append)
    argv = ["distill.py", "--regime", "--lrs", "0.001", "--etas", "1", "--budgets", "1", "--seeds", "0",
            "--prompt", "a red house", "--results", str(tmp_path)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    distill.main()
    runs = {(method, tag, tuple(overrides)) for _, method, _, _, _, overrides, tag, *_ in jobs}
    assert not any(keep for *_, keep in jobs)  # scenes are kept only when asked (--keep-scenes)
    assert runs == {("vsd", "-lr0.001", ("guidance.lora_lr=0.001",)),
                    ("l2vsd", "-lr0.001-eta1", ("guidance.lora_lr=0.001", "guidance.lookahead_scale=1.0"))}  # fmt: skip
    assert distill.regime_reference({"method": "l2vsd-lr0.001-eta1"}) == "vsd-lr0.001"


def test_sweep_table_is_empty_without_sweep_runs():
    prompt = distill.SWEEP_PROMPTS[0]
    runs = [result(m, prompt, 0, 0.5) for m in ("vsd", "l2vsd", "l2vsd-fd", "l2vsd-fd-view")]
    assert distill.sweep_table(runs) == ""  # the report must not overwrite an earlier sweep's table
    assert "l2vsd-eta0.1" in distill.sweep_table([*runs, result("l2vsd-eta0.1", prompt, 0, 0.6)])


def test_compare_pairs_runs_of_the_same_name_across_two_folders(tmp_path):
    import json

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for prompt, seed, iou_a, iou_b in [("a red house", 0, 0.8, 0.7), ("a red house", 1, 0.9, 0.7),
                                       ("a red cube", 0, 0.5, 0.6)]:  # fmt: skip
        name = f"{distill.run_id('l2vsd', 1, prompt, seed)}.json"
        (a / name).write_text(json.dumps(result("l2vsd", prompt, seed, iou_a)))
        (b / name).write_text(json.dumps(result("l2vsd", prompt, seed, iou_b)))
    (a / "vsd-x1-a-red-house-s0.json").write_text(json.dumps(result("vsd", "a red house", 0, 0.1)))  # no namesake
    rows = {line.split("|")[1].strip(): line.split("|") for line in distill.compare_table(a, b).splitlines()[2:]}
    iou = 3 + distill.METRICS.index("iou")
    assert set(rows) == {"all", "houses", "other kinds"}  # no mug run: no mug row
    assert rows["all"][2].strip() == "3"
    assert rows["houses"][iou].strip() == "+0.150 ± 0.050"  # differences 0.1 and 0.2
    assert rows["other kinds"][iou].strip() == "-0.100 ± 0.000"
    with pytest.raises(SystemExit, match="namesake"):
        distill.compare_table(a, tmp_path)
