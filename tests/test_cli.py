"""The CLI: exit codes, one-line errors, files written, plugins from decorators and entry points."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

import plugins  # noqa: F401  (registers TagModel, DeclareTarget)
from aaq.cli import main
from helpers import TINY, base_spec

ROOT = Path(__file__).resolve().parents[1]


def write_spec(tmp_path: Path, spec: dict, name: str = "spec.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(spec))
    return path


def test_run_writes_model_and_report(tmp_path: Path, capsys) -> None:
    spec_path = write_spec(tmp_path, base_spec())
    before = (TINY / "model.onnx").read_bytes()
    code = main(["run", str(spec_path), "--output-dir", str(tmp_path / "out"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    model = onnx.load(str(tmp_path / "out" / "model.quantized.onnx"))
    assert {p.key: p.value for p in model.metadata_props}["aaq.tag"] == "v"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["target_met"] is True
    assert [a["name"] for a in report["algorithms"]] == ["TagModel"]
    assert report["algorithms"][0]["params"] == {"key": "aaq.tag", "value": "v", "repeat": 1}
    assert report["metrics"]["top1"]["float"] == pytest.approx(1.0)
    assert report["metrics"]["top1"]["drop"] == pytest.approx(0.0)
    assert (tmp_path / "out" / "aaq.log").read_text().count("TagModel") >= 1
    assert (TINY / "model.onnx").read_bytes() == before
    assert not list((tmp_path / "out").glob("*.tmp"))
    assert "top1: float 1.0000" in capsys.readouterr().out


def test_missed_target_exits_3_and_still_writes_the_model(tmp_path: Path) -> None:
    spec = base_spec()
    spec["compression"]["algorithms"] = [{"name": "DeclareTarget", "params": {"met": False}}]
    code = main(["run", str(write_spec(tmp_path, spec)), "--output-dir", str(tmp_path / "o"), "--no-progress"])
    assert code == 3
    assert (tmp_path / "o" / "model.quantized.onnx").exists()
    assert json.loads((tmp_path / "o" / "report.json").read_text())["target_met"] is False


@pytest.mark.parametrize("mutate, phrase", [
    (lambda s: s["compression"]["algorithms"][0].update(name="TagModle"), "did you mean 'TagModel'"),
    (lambda s: s["model"].update(path="missing.onnx"), "model.path: file not found"),
], ids=["unknown algorithm", "missing file"])
def test_validate_refuses_with_one_line_per_fault_and_exit_2(tmp_path: Path, capsys, mutate, phrase) -> None:
    spec = base_spec()
    mutate(spec)
    assert main(["validate", str(write_spec(tmp_path, spec))]) == 2
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err


def test_run_on_a_broken_model_is_bad_input(tmp_path: Path, capsys) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    spec = base_spec()
    spec["model"]["path"] = "model.onnx"
    assert main(["run", str(write_spec(tmp_path, spec)), "--output-dir", str(tmp_path / "o")]) == 2
    assert "cannot load" in capsys.readouterr().err


def test_malformed_spec_file_gives_line_col(tmp_path: Path, capsys) -> None:
    path = tmp_path / "spec.json"
    path.write_text('{\n  "model": {\n}')
    assert main(["validate", str(path)]) == 2
    assert f"{path}:3:2" in capsys.readouterr().err


@pytest.mark.parametrize("template", sorted((ROOT / "algorithms_specs").glob("*.json")), ids=lambda p: p.name)
def test_templates_validate_and_list_every_param_at_its_default(template: Path, capsys) -> None:
    from aaq.algorithms.base import algorithms
    from aaq.spec.loader import load_spec_file

    assert main(["validate", str(template)]) == 0, capsys.readouterr().err
    for entry in load_spec_file(template)["compression"]["algorithms"]:
        schema = algorithms.get(entry["name"]).schema
        assert set(entry["params"]) == set(schema["properties"]), entry["name"]
        for key, prop in schema["properties"].items():
            assert entry["params"][key] == prop["default"], f"{entry['name']}.{key}"


def test_schema_command_prints_the_algorithm_schema(capsys) -> None:
    assert main(["schema", "TagModel"]) == 0
    assert json.loads(capsys.readouterr().out)["properties"]["repeat"]["maximum"] == 5
    assert main(["schema"]) == 0
    assert "compression" in json.loads(capsys.readouterr().out)["properties"]


def _demo_distribution(root: Path, broken: bool = False) -> Path:
    """A plugin distribution on a path entry, found by importlib.metadata as if pip-installed."""
    (root / "aaq_demo_plugin").mkdir(parents=True)
    default = 3 if not broken else 4
    (root / "aaq_demo_plugin" / "__init__.py").write_text(textwrap.dedent(f"""
        from dataclasses import dataclass
        from aaq import Algorithm

        class Stamp(Algorithm):
            @dataclass(frozen=True)
            class Params:
                times: int = 3
            schema = {{"type": "object", "additionalProperties": False,
                      "properties": {{"times": {{"type": "integer", "default": {default}}}}}}}

            def run(self, state, engine):
                self.summary = {{"stamped": self.params.times}}
                return state
    """))
    info = root / "aaq_demo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: aaq-demo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[aaq.algorithms]\nStamp = aaq_demo_plugin:Stamp\n")
    return root


def _aaq(args: list[str], pythonpath: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pythonpath), str(ROOT)]))
    return subprocess.run([sys.executable, "-m", "aaq", *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_entry_point_plugin_is_listed_and_runs_from_a_spec(tmp_path: Path) -> None:
    site = _demo_distribution(tmp_path / "site")
    listed = _aaq(["list"], site, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert any(line.split()[:3] == ["Stamp", "distribution", "aaq-demo-plugin"]
               for line in listed.stdout.splitlines()), listed.stdout
    spec = base_spec()
    spec["compression"]["algorithms"] = [{"name": "Stamp"}]
    ran = _aaq(["run", str(write_spec(tmp_path, spec)), "--output-dir", "out", "--no-progress"], site, tmp_path)
    assert ran.returncode == 0, ran.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["algorithms"][0]["summary"] == {"stamped": 3}


def test_broken_entry_point_plugin_is_listed_as_broken_and_refused_only_when_named(tmp_path: Path) -> None:
    site = _demo_distribution(tmp_path / "site", broken=True)
    listed = _aaq(["list"], site, tmp_path)
    assert listed.returncode == 0, listed.stderr
    line, = [line for line in listed.stdout.splitlines() if line.split()[:1] == ["Stamp"]]
    assert "distribution aaq-demo-plugin  BROKEN: " in line
    assert "schema default 4 != dataclass default 3" in line
    spec = base_spec()
    spec["compression"]["algorithms"] = [{"name": "DefaultQuantization"}]
    ok = _aaq(["validate", str(write_spec(tmp_path, spec, "ok.json"))], site, tmp_path)
    assert ok.returncode == 0, ok.stderr
    spec["compression"]["algorithms"] = [{"name": "Stamp"}]
    named = _aaq(["validate", str(write_spec(tmp_path, spec))], site, tmp_path)
    assert named.returncode == 2
    assert "compression.algorithms[0].name: the algorithm 'Stamp' is installed but broken" in named.stderr
    assert "plugin 'Stamp' (from distribution aaq-demo-plugin)" in named.stderr
    assert "schema default 4 != dataclass default 3" in named.stderr


def test_python_m_aaq_help() -> None:
    out = subprocess.run([sys.executable, "-m", "aaq", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "validate" in out.stdout


def test_no_evaluate_quantizes_and_infers_nothing_beyond_calibration(tmp_path: Path, capsys, monkeypatch) -> None:
    from aaq.engine.engine import Engine

    spec = base_spec()
    spec["compression"]["algorithms"] = [{"name": "DefaultQuantization", "params": {"stat_subset_size": 32}}]
    engines: list[Engine] = []
    built = Engine.from_spec.__func__
    monkeypatch.setattr(Engine, "from_spec", classmethod(lambda cls, *a, **k: engines.append(built(cls, *a, **k))
                                                         or engines[-1]))
    code = main(["run", str(write_spec(tmp_path, spec)), "--output-dir", str(tmp_path / "out"), "--no-progress",
                 "--no-evaluate"])
    assert code == 0, capsys.readouterr().err
    assert "metrics: not measured" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["evaluated"] is False and report["metrics"] == {"top1": {"measured": False}}
    assert report["evaluations"] == [] and report["totals"]["samples_inferred"] == 0
    assert sum(engines[0].inferred_by_model.values()) == 0   # no sample of the dataset was run
    assert (tmp_path / "out" / "model.quantized.onnx").exists()


def test_evaluate_false_in_the_spec_and_the_default(tmp_path: Path) -> None:
    from aaq import Pipeline

    spec = base_spec()
    spec["compression"]["algorithms"] = [{"name": "DefaultQuantization", "params": {"stat_subset_size": 32}}]
    assert Pipeline(spec, progress=False).run().metrics["top1"].quantized > 0.9      # default: measured
    result = Pipeline({**spec, "evaluate": False}, progress=False).run()
    assert result.metrics == {} and not result.evaluated
