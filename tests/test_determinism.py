"""Determinism (issue 17): the same spec and seed give a byte-identical model, and a report.json
identical but for ``timings``, the one field that holds what was measured in time."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from aaq.cli import main

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
    assert set(timings[0]) == {"created", "seconds", "algorithms", "evaluations", "latency", "executors"}
    assert all("task_seconds" not in e for e in reports[0]["executors"])
    assert [a["name"] for a in timings[0]["algorithms"]] == ["DefaultQuantization"]
    assert all("seconds" not in a for a in reports[0]["algorithms"])
    assert all("seconds" not in e for e in reports[0]["evaluations"])
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(("model:", "report:", "html:"))]
    assert lines[:len(lines) // 2] == lines[len(lines) // 2:]
