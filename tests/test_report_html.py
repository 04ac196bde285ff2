"""report.html: what a reader sees equals what report.json says; odd or old reports draw; bad files exit 2."""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest

from aaq.version import __version__
from aaq.cli import main
from aaq.errors import ReportError
from aaq.report_html import check_report, render_report, write_report_html
from pages import AAQ_SPEC, ROOT, parse, ranked_groups, synthetic_report, table_values


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A real DefaultQuantization -> AccuracyAwareQuantization run on samples/tiny, through the CLI."""
    out = tmp_path_factory.mktemp("tiny")
    assert main(["run", str(AAQ_SPEC), "--output-dir", str(out), "--no-progress"]) == 0
    return out


def test_run_writes_report_html_whose_tables_equal_report_json(tiny_run: Path) -> None:
    report = json.loads((tiny_run / "report.json").read_text())
    page = parse((tiny_run / "report.html").read_text())
    metrics = page.one("table", "metrics")
    assert table_values(metrics, 0) == list(report["metrics"])
    for column, key in ((4, "float"), (5, "quantized"), (6, "drop")):
        assert [float(v) for v in table_values(metrics, column)] == [m[key] for m in report["metrics"].values()]
    aaq = report["algorithms"][1]["summary"]
    assert float(table_values(metrics, 7)[0]) == aaq["metrics"]["top1"]["allowed_drop"]
    steps = page.one("table", "steps")
    assert [int(v) for v in table_values(steps, 1)] == [s["group"] for s in aaq["steps"]]
    # a step that stopped early (a group tried back in INT8 and needed) shows its drop's bounds
    drops = [[float(x) for x in v.split(",")] if "," in v else float(v) for v in table_values(steps, 6)]
    assert drops == [s["drops"]["top1"] for s in aaq["steps"]]
    model = page.one("table", "model")
    assert [int(v) for v in table_values(model, 4)] == [report["model"]["bytes"]]
    assert report["model"]["float_file_bytes"] == (ROOT / "samples" / "tiny" / "model.onnx").stat().st_size
    assert "target met" in page.one("h1").all_text()


def test_run_charts_count_the_groups_and_steps_of_the_run(tiny_run: Path) -> None:
    report = json.loads((tiny_run / "report.json").read_text())
    aaq = report["algorithms"][1]["summary"]
    page = parse((tiny_run / "report.html").read_text())
    ranking = page.one("figure", id="ranking-1")
    assert len(ranking.find("rect", "bar")) == ranked_groups(aaq)
    assert len(ranking.find("rect", "bar", "reverted")) == len(aaq["reverted"])
    steps = page.one("figure", id="steps")
    assert len(steps.find("circle", "point")) == len(aaq["steps"]) + 1  # + the fully quantized start
    assert len(steps.find("circle", "point", "rolled-back")) == sum(not s["kept"] for s in aaq["steps"])


def test_the_times_report_json_keeps_under_timings_are_drawn_where_they_belong(tiny_run: Path) -> None:
    report = json.loads((tiny_run / "report.json").read_text())
    assert "created" not in report and "seconds" not in report["totals"]  # kept apart, for equal reports
    page = parse((tiny_run / "report.html").read_text())
    meta = page.one("p", "meta").all_text()
    assert report["timings"]["created"] in meta and "run took —" not in meta
    time = {r[0].all_text(): float(r[1].attrs["data-value"]) for r in page.one("table", "time").rows()}
    timed = {a["name"]: a["seconds"] for a in report["timings"]["algorithms"]}
    assert sum(time.values()) == pytest.approx(report["timings"]["seconds"], rel=0.01)
    assert all(seconds > 0 for seconds in timed.values())
    latency = report["timings"]["latency"]["AccuracyAwareQuantization"]
    assert f"x{latency['ratio']:.2f}" in page.one("section", id="outcome").all_text()


def test_no_html_flag_and_a_failed_render_do_not_fail_the_run(tmp_path: Path, monkeypatch, caplog) -> None:
    assert main(["run", str(AAQ_SPEC), "--output-dir", str(tmp_path / "a"), "--no-progress", "--no-html"]) == 0
    assert (tmp_path / "a" / "report.json").exists() and not (tmp_path / "a" / "report.html").exists()

    def broken(report):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr("aaq.report_html.render_report", broken)
    with caplog.at_level(logging.WARNING, logger="aaq"):
        assert main(["run", str(AAQ_SPEC), "--output-dir", str(tmp_path / "b"), "--no-progress"]) == 0
    assert not (tmp_path / "b" / "report.html").exists()
    assert "report.html was NOT written (RuntimeError: drawing failed)" in caplog.text
    assert "report.html was NOT written" in (tmp_path / "b" / "aaq.log").read_text()


def test_report_command_writes_beside_or_where_told(tiny_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["report", str(tiny_run / "report.json"), "-o", str(tmp_path / "sub" / "page.html")]) == 0
    assert (tmp_path / "sub" / "page.html").read_text().startswith("<!DOCTYPE html>")
    assert f"html: {tmp_path / 'sub' / 'page.html'}" in capsys.readouterr().out
    assert not list((tmp_path / "sub").glob("*.tmp"))
    assert write_report_html(tiny_run) == tiny_run / "report.html"  # a run's directory names its report


def test_page_is_self_contained_and_escapes_the_report(tiny_run: Path) -> None:
    report = synthetic_report()
    report["algorithms"][1]["summary"]["plan"]["groups"][2]["layers"] = ["<script>alert(1)</script>"]
    html = render_report(report)
    assert "http" not in html and "<link" not in html and "src=" not in html and "@import" not in html
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert "http" not in (tiny_run / "report.html").read_text()


def test_sensitivity_from_the_rankings_every_group_with_the_reverted_marked() -> None:
    report = synthetic_report()
    page = parse(render_report(report))
    first = page.one("figure", id="ranking-1")
    ranking = report["algorithms"][1]["summary"]["rankings"][0]
    assert len(first.find("rect", "bar")) == len(ranking["scores"]) == 5
    reverted = first.find("rect", "bar", "reverted")
    assert len(reverted) == 2 and all("in float" in r.one("title").all_text() for r in reverted)
    table = first.one("table", "ranking")
    assert [int(v) for v in table_values(table, 1)] == [s["group"] for s in ranking["scores"]]
    assert [float(v) for v in table_values(table, 3)] == [s["score"] for s in ranking["scores"]]
    assert table_values(table, 2)[0] == "conv3, relu3"  # layer names from the plan
    assert [v.strip() for v in table_values(table, 4)] == ["float", "int8", "float", "int8", "int8"]
    second = page.one("figure", id="ranking-2")
    assert len(second.find("rect", "bar")) == 2
    assert "Ranking 2 of 2, for top1, on 40 samples, by metric, with group(s) 3 already in float" in \
        second.one("figcaption").all_text()


def test_sensitivity_of_an_older_report_uses_the_scores_of_the_steps() -> None:
    report = synthetic_report()
    summary = report["algorithms"][1]["summary"]
    summary["rankings"] = 2
    del summary["plan"]
    page = parse(render_report(report))
    bars = page.one("figure", id="ranking-1").find("rect", "bar")
    assert len(bars) == 3  # groups 3, 0, 1: the ones the search tried
    text = page.one("section", id="sensitivity").all_text()
    assert "only the scores of the 3 groups the search tried (2 ranking(s)" in text
    assert not page.find("figure", id="ranking-2")


def test_steps_chart_marks_rolled_back_and_stopped_evaluations() -> None:
    report = synthetic_report()
    steps = parse(render_report(report)).one("figure", id="steps")
    points = steps.find("circle", "point")
    assert len(points) == 2 * (3 + 1)  # two metrics, three steps and the start
    assert len(steps.find("circle", "point", "rolled-back")) == 2
    assert len(steps.find("circle", "point", "partial")) == 2
    assert len(steps.find("line", "interval")) == 2
    start = steps.find("circle", "point", "start")
    assert [p.one("title").all_text() for p in start][0].endswith("top1 drop +0.0600")  # 0.9 - 0.84, from history
    table = steps.one("table", "steps")
    assert table_values(table, 6)[1] == "0.06,0.2"
    assert [r[4].all_text() for r in table.rows()] == ["kept", "rolled back", "kept"]


def test_confidence_intervals_are_drawn_as_capped_error_bars_on_drops_and_steps() -> None:
    report = synthetic_report()
    iv = lambda point, low, high, which="search": {"point": point, "low": low, "high": high, "level": 0.95,  # noqa
                                                     "samples": 300, "resamples": 2000, "seed": 0, "set": which,
                                                     "drop_type": "absolute"}
    report["metrics"]["top1"].update(interval=iv(0.03, 0.01, 0.05), held_out=iv(0.04, 0.02, 0.07, "held-out"))
    steps = report["algorithms"][1]["summary"]["steps"]
    steps[0]["intervals"] = {"top1": iv(0.05, 0.02, 0.08), "top5": iv(0.025, 0.0, 0.05)}
    page = parse(render_report(report))
    drops = page.one("figure", id="drops")
    assert len(drops.find("rect", "bar")) == 3  # top1, top1 held-out, top5 (no interval: no error bar)
    assert len(drops.find("path", "ci")) == 2
    titles = [r.one("title").all_text() for r in drops.find("rect", "bar")]
    assert "95% interval [+0.0100, +0.0500] on 300 samples" in titles[0]
    assert titles[1].startswith("top1 (held-out): drop +0.0400")
    assert len(drops.find("rect", "bar", "over")) == 2  # the held-out interval lies wholly above 0.01
    chart = page.one("figure", id="steps")
    assert len(chart.find("path", "ci")) == 2  # the first step's two complete intervals
    assert len(chart.find("line", "interval")) == 2  # the stopped evaluation keeps its plain bar
    assert "capped bar" in chart.all_text()
    assert len(parse(render_report(synthetic_report())).one("figure", id="drops").find("path", "ci")) == 0


def _start_points(report: dict) -> list[str]:
    steps = parse(render_report(report)).one("figure", id="steps")
    return [p.one("title").all_text() for p in steps.find("circle", "point", "start")]


def test_search_start_is_drawn_only_when_the_history_says_it_surely() -> None:
    report = synthetic_report()
    assert len(_start_points(report)) == 2  # the float model's evaluation first, then the quantized one
    del report["evaluations"][0]  # every baseline given: the float model was never evaluated
    report["algorithms"][1]["summary"]["metrics"]["top1"].update(float=None, reference_kind="baseline_value")
    assert _start_points(report)[0].endswith("top1 drop +0.0600")
    report = synthetic_report()
    report["algorithms"][1]["summary"]["alternatives"] = {"mixed_preset": {"tried": [], "kept": {"preset": "mixed"}}}
    assert _start_points(report) == []  # the search started from the kept alternative's model
    report = synthetic_report()
    report["evaluations"][1]["values"] = {"top1": 0.9, "top5": 0.99}  # a first model within the target: not a start
    assert _start_points(report) == []


def test_trials_section_marks_the_chosen_trial_and_the_exit_case() -> None:
    page = parse(render_report(synthetic_report()))
    trials = page.one("section", id="trials")
    assert len(trials.find("circle", "point")) == 3
    chosen = trials.one("circle", "point", "chosen")
    assert "trial 1" in chosen.one("title").all_text()
    assert len(trials.find("circle", "point", "failed")) == 1
    assert "max_trials" in trials.all_text()
    assert [float(v) for v in table_values(trials.one("table", "trials"), 3)] == [0.8, 0.88, 0.86]


def test_outcome_quantization_and_time_read_the_report() -> None:
    page = parse(render_report(synthetic_report()))
    assert "target NOT met" in page.one("h1").all_text()
    assert "max_iter_num reached" in page.one("section", id="outcome").all_text()
    drops = page.one("figure", id="drops")
    assert len(drops.find("rect", "bar")) == 2 and len(drops.find("rect", "bar", "over")) == 1
    assert "x0.25 of the spec's float model file" in page.one("section", id="outcome").all_text()
    decisions = {r[0].all_text(): r[2].all_text() for r in page.one("table", "decisions").rows()}
    assert decisions["conv1"] == "reverted by AccuracyAwareQuantization (group 1)"
    assert decisions["head"] == "ignored (scope)"
    assert decisions["dw"].startswith("latency: depthwise")
    assert decisions["cast_mm"] == "dtype: input 'x' is not float32"
    time = {r[0].all_text(): float(r[1].attrs["data-value"]) for r in page.one("table", "time").rows()}
    assert time["ranking"] == 3.0 and time["full-set evaluations"] == 5.0 and time["latency check"] == 0.5
    assert time["DefaultQuantization (calibration, ranges, QDQ)"] == 2.0
    assert sum(time.values()) == pytest.approx(14.0)
    assert len(page.one("figure", id="time-chart").find("rect", "segment")) == len(time)
    models = [r[1].all_text() for r in page.one("table", "evaluations").rows()]
    assert models == ["float", "q" * 12, "float", "final"]  # named by their values, the rest by digest


@pytest.mark.parametrize("mutate", [
    lambda r: r["algorithms"].clear(),
    lambda r: r.update(evaluations=[], totals={}, spec={}, model={}),
    lambda r: r["algorithms"][1]["summary"].update(steps="not a list", rankings=[{"scores": "x"}], latency=None),
    lambda r: r["algorithms"][1].update(summary=None),
    lambda r: r["algorithms"][2]["summary"].update(trials=[{"config": None}], best={"config": "nothing"}),
    lambda r: r["metrics"]["top1"].update(drop=None, float="n/a"),
], ids=["no algorithms", "no evaluations", "odd shapes", "no summary", "odd trials", "odd metric"])
def test_missing_or_odd_fields_draw_the_rest_of_the_page(mutate) -> None:
    report = synthetic_report()
    mutate(report)
    page = parse(render_report(report))
    assert page.one("section", id="outcome")
    notes = [n.all_text() for n in page.find("p", "note") if "could not be drawn" in n.all_text()]
    assert len(notes) <= 1, notes  # at most the one section whose field is malformed says so


def test_minimal_report_renders() -> None:
    html = render_report({"aaq_version": __version__, "target_met": True, "metrics": {}, "algorithms": []})
    assert "no accuracy target set" in html


@pytest.mark.parametrize("content, phrase", [
    ('{"aaq_version": "0.1.0", "target_met": tr', "not valid JSON at line 1 column 40"),
    ("", "not valid JSON"),
    ("[1, 2]", "not an aaq report: a JSON list"),
    ('{"aaq_version": "0.1.0"}', "no 'target_met', 'metrics', 'algorithms'"),
    (json.dumps({"aaq_version": "99.0.0", "target_met": True, "metrics": {}, "algorithms": []}),
     "written by aaq 99.0.0"),
    (json.dumps({"aaq_version": "0.1.0", "target_met": True, "metrics": [], "algorithms": []}),
     "'metrics' must be an object"),
], ids=["truncated", "empty", "not an object", "missing keys", "other major version", "wrong types"])
def test_bad_report_is_one_line_naming_the_file_and_exit_2(tmp_path: Path, capsys, content: str, phrase: str) -> None:
    path = tmp_path / "report.json"
    path.write_text(content)
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"aaq: error: {path}: ") and phrase in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "report.html").exists()


def test_truncated_file_written_by_a_run_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    text = (tiny_run / "report.json").read_text()
    (tmp_path / "report.json").write_text(text[: len(text) // 2])
    with pytest.raises(ReportError, match="truncated"):
        write_report_html(tmp_path / "report.json")
    with pytest.raises(ReportError, match="not an aaq report"):
        check_report(copy.deepcopy({"metrics": {}}))


def test_a_real_tuning_run_draws_its_trials_and_exit_case(tmp_path) -> None:
    from aaq.cli import main

    assert main(["run", str(ROOT / "algorithms_specs" / "Tuning.json"), "--output-dir", str(tmp_path),
                 "--no-progress"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    tuning = next(a["summary"] for a in report["algorithms"] if a["name"] == "Tuning")
    trials = parse((tmp_path / "report.html").read_text()).one("section", id="trials")
    measured = [t for t in tuning["trials"] if t["objectives"]]  # objectives are measured on passing trials
    assert measured and len(trials.find("circle", "point")) == len(measured)
    chosen = trials.one("circle", "point", "chosen").one("title").all_text()
    assert f"trial {tuning['best']['trial']}: performance" in chosen
    assert len(trials.one("table", "trials").rows()) == len(tuning["trials"])
    assert tuning["exit"] in trials.all_text()
