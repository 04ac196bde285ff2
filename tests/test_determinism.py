"""Determinism (issue 17): the same spec and seed give a byte-identical model, and a report.json
identical but for ``timings``, the one field that holds what was measured in time."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from aaq.cli import main
from aaq.report_html import with_timings
from aaq.report_timings import split_times

ROOT = Path(__file__).resolve().parents[1]


def test_two_runs_of_one_spec_give_the_same_model_and_report_but_timings(tmp_path: Path, capsys) -> None:
    for name in ("model.onnx", "data.npz", "spec.json"):
        shutil.copy(ROOT / "samples" / "tiny" / name, tmp_path / name)
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert main(["run", str(tmp_path / "spec.json"), "--output-dir", str(out), "--no-progress"]) == 0
    first, second = ((out / "tiny.quantized.onnx").read_bytes() for out in outs)
    assert first == second
    reports = [json.loads((out / "report.json").read_text()) for out in outs]
    timings = [r.pop("timings") for r in reports]
    assert reports[0] == reports[1]
    assert set(timings[0]) == {"created", "seconds", "algorithms", "evaluations", "latency", "executors", "summaries"}
    assert all("task_seconds" not in e for e in reports[0]["executors"])
    assert [a["name"] for a in timings[0]["algorithms"]] == ["DefaultQuantization"]
    assert all("seconds" not in a for a in reports[0]["algorithms"])
    assert all("seconds" not in e for e in reports[0]["evaluations"])
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(("model:", "report:", "html:"))]
    assert lines[:len(lines) // 2] == lines[len(lines) // 2:]


def test_accuracy_aware_reports_are_equal_but_timings_and_the_page_gets_every_time_back(tmp_path: Path) -> None:
    """AccuracyAwareQuantization's summary times its evaluations, ranking and intervals: those seconds move
    under timings.summaries (nothing decided by the clock here: latency_aware off, faster_than_float off)."""
    for name in ("model.onnx", "data.npz"):
        shutil.copy(ROOT / "samples" / "tiny" / name, tmp_path / name)
    spec = json.loads("\n".join(line for line in (ROOT / "samples" / "tiny" / "spec.json").read_text().splitlines()
                                if not line.lstrip().startswith("//")))
    spec["compression"]["algorithms"] = [
        {"name": "DefaultQuantization", "params": {"stat_subset_size": 128, "latency_aware": "off"}},
        {"name": "AccuracyAwareQuantization", "params": {"maximal_drop": 0.0, "faster_than_float": False}}]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    reports = []
    for out in (tmp_path / "a", tmp_path / "b"):
        assert main(["run", str(tmp_path / "spec.json"), "--output-dir", str(out), "--no-progress"]) == 0
        reports.append(json.loads((out / "report.json").read_text()))
    summary_times = reports[0]["timings"]["summaries"][1]
    assert summary_times and "seconds" in summary_times  # the AAQ summary's own seconds were there
    shown = with_timings(reports[0])["algorithms"][1]["summary"]
    assert isinstance(shown.pop("latency")["ratio"], float)  # back under the summary, as before
    assert isinstance(shown["seconds"], float) and split_times(shown)[0] == reports[0]["algorithms"][1]["summary"]
    for report in reports:
        report.pop("timings")
    assert reports[0] == reports[1]


def test_split_times_takes_out_only_seconds_and_merge_puts_them_back() -> None:
    summary = {"seconds": 1.5, "ranking_seconds": 0.25, "steps": [{"name": "a", "seconds": 0.1}, {"name": "b"}],
               "budget": {"budget_seconds": 5, "rounds": 3}, "flag": True, "seconds_note": "kept"}
    rest, times = split_times(summary)
    assert rest == {"steps": [{"name": "a"}, {"name": "b"}], "budget": {"rounds": 3}, "flag": True,
                    "seconds_note": "kept"}
    assert times == {"seconds": 1.5, "ranking_seconds": 0.25, "steps": {"0": {"seconds": 0.1}},
                     "budget": {"budget_seconds": 5}}
    from aaq.report_timings import merge_times
    assert merge_times(rest, times) == summary
