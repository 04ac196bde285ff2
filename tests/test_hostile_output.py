"""The output directory (issue 17, classes 1-3): nothing outside it, the input never replaced, the
model, report.json and aaq.log published as one pair, signals like Ctrl-C; one table per class."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

import plugins  # noqa: F401  (registers TagModel)
from aaq import Algorithm, Pipeline, register_algorithm
from aaq.cli import main
from aaq.errors import BadInputError
from aaq.output import RunFolder, current_folder, write_files
from aaq.report import output_filename
from helpers import TINY, base_spec

ROOT = Path(__file__).resolve().parents[1]


@register_algorithm("HostileSignal")
class HostileSignal(Algorithm):
    """Sends its own process a signal from inside ``run``, as a user's kill would arrive mid-run."""

    @dataclass(frozen=True)
    class Params:
        signum: int = 15

    schema = {"type": "object", "additionalProperties": False,
              "properties": {"signum": {"type": "integer", "default": 15}}}

    def run(self, state, engine):
        os.kill(os.getpid(), self.params.signum)
        time.sleep(5)  # the handler raises before this ends
        return state


@register_algorithm("HostileSummary")
class HostileSummary(Algorithm):
    """Leaves a summary that is not JSON: an object, a reference to itself, or bytes."""

    @dataclass(frozen=True)
    class Params:
        kind: str = "object"

    schema = {"type": "object", "additionalProperties": False,
              "properties": {"kind": {"enum": ["object", "circular", "bytes"], "default": "object"}}}

    def run(self, state, engine):
        if self.params.kind == "object":
            self.summary = {"thing": object()}
        elif self.params.kind == "circular":
            self.summary = {}
            self.summary["me"] = self.summary
        else:
            self.summary = {"raw": b"\x00"}
        return state


@register_algorithm("HostileSleep")
class HostileSleep(Algorithm):
    """Says it started (a file), then sleeps: a run to kill from outside."""

    @dataclass(frozen=True)
    class Params:
        flag: str = ""

    schema = {"type": "object", "additionalProperties": False,
              "properties": {"flag": {"type": "string", "default": ""}}}

    def run(self, state, engine):
        Path(self.params.flag).write_text("started")
        time.sleep(60)
        return state


def _spec_file(tmp_path: Path, spec: dict | None = None, name: str = "spec.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(spec or base_spec()))
    return path


def _run(spec_path: Path, out: Path, *extra: str) -> int:
    return main(["run", str(spec_path), "--output-dir", str(out), "--no-progress", *extra])


def _pair(out: Path) -> tuple[str, str]:
    """(sha256 of the published model, the sha256 report.json says it has): equal for a pair."""
    report = json.loads((out / "report.json").read_text())
    model = (out / report["model"]["file"]).read_bytes()
    return hashlib.sha256(model).hexdigest(), report["model"]["sha256"]


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


# ---------------------------------------------------------------- class 1: nothing outside, input untouched

@dataclass
class Clash:
    arrange: Callable[[Path], tuple[dict, Path]]
    """Makes the model, spec and output dir in tmp; returns (spec, output dir)."""


def _model_named_like_the_output(tmp: Path) -> tuple[dict, Path]:
    (tmp / "m.quantized.onnx").write_bytes((TINY / "model.onnx").read_bytes())
    spec = base_spec()
    spec["model"] = {"name": "m", "path": str(tmp / "m.quantized.onnx")}
    return spec, tmp


def _hard_link_to_the_output(tmp: Path) -> tuple[dict, Path]:
    (tmp / "src").mkdir()
    (tmp / "src" / "model.onnx").write_bytes((TINY / "model.onnx").read_bytes())
    (tmp / "out").mkdir()
    os.link(tmp / "src" / "model.onnx", tmp / "out" / "model.quantized.onnx")
    spec = base_spec()
    spec["model"] = {"path": str(tmp / "src" / "model.onnx")}
    return spec, tmp / "out"


def _previous_output_requantized_in_place(tmp: Path) -> tuple[dict, Path]:
    assert _run(_spec_file(tmp, name="first.json"), tmp / "out") == 0
    spec = base_spec()
    spec["model"] = {"name": "model", "path": str(tmp / "out" / "model.quantized.onnx")}
    return spec, tmp / "out"


def _data_file_named_like_the_report(tmp: Path) -> tuple[dict, Path]:
    (tmp / "report.json").write_bytes((TINY / "data.npz").read_bytes())
    spec = base_spec()
    spec["engine"]["dataset"]["path"] = str(tmp / "report.json")
    return spec, tmp


CLASHES = {
    "output path equals the model": Clash(_model_named_like_the_output),
    "output is a hard link of the model": Clash(_hard_link_to_the_output),
    "the previous output, quantized in place": Clash(_previous_output_requantized_in_place),
    "the data file is where report.json goes": Clash(_data_file_named_like_the_report),
}


@pytest.mark.parametrize("case", CLASHES.values(), ids=CLASHES.keys())
def test_an_output_that_would_replace_an_input_is_refused_before_the_run(tmp_path: Path, capsys,
                                                                         case: Clash) -> None:
    spec, out = case.arrange(tmp_path)
    inputs = [Path(spec["model"]["path"]), Path(spec["engine"]["dataset"]["path"])]
    before = [p.read_bytes() for p in inputs]
    capsys.readouterr()
    assert _run(_spec_file(tmp_path, spec), out) == 2
    err = capsys.readouterr().err
    assert "would replace the input" in err and "Traceback" not in err
    assert [p.read_bytes() for p in inputs] == before


UNSAFE_NAMES = {
    "parent directory": ("../../pwned", "_.._pwned.quantized.onnx"),
    "absolute": ("/tmp/pwned", "_tmp_pwned.quantized.onnx"),
    "NUL": ("a\x00b", "a_b.quantized.onnx"),
    "dot dot": ("..", "model.quantized.onnx"),
    "surrogate": ("a\ud800", "a?.quantized.onnx"),
}


@pytest.mark.parametrize("name, expected", UNSAFE_NAMES.values(), ids=UNSAFE_NAMES.keys())
def test_result_save_keeps_a_name_from_code_inside_the_output_directory(tmp_path: Path, name, expected) -> None:
    result = Pipeline(base_spec(), progress=False).run()
    result.model_name = name
    out = tmp_path / "a" / "b" / "out"
    path = result.save(out)
    assert path == out / expected and path.is_file()
    written = list(tmp_path.rglob("*.onnx"))
    assert {p.name for p in written} == {expected} and all(out in p.parents for p in written)


def test_a_name_too_long_for_the_file_system_is_shortened_with_a_digest() -> None:
    name = output_filename("\u00e9" * 300)
    assert len(name.encode()) <= 255 and name.endswith(".quantized.onnx")
    assert output_filename("\u00e9" * 300) == name != output_filename("\u00e9" * 301)


# ---------------------------------------------------------------- class 2: one pair, one transaction

def test_runs_publish_matching_pairs_and_keep_only_the_current_and_previous(tmp_path: Path) -> None:
    out = tmp_path / "out"
    digests = []
    for value in ("a", "b", "c", "d"):
        spec = base_spec()
        spec["compression"]["algorithms"][0]["params"]["value"] = value
        assert _run(_spec_file(tmp_path, spec), out) == 0
        model, claimed = _pair(out)
        assert model == claimed
        digests.append(model)
        assert {p.name for p in out.iterdir()} == {".runs", "model.quantized.onnx", "report.json", "report.html",
                                                   "aaq.log"}
        assert "TagModel" in (out / "aaq.log").read_text()
    assert len(set(digests)) == 4
    runs = sorted(p.name for p in (out / ".runs").iterdir())
    assert len(runs) == 3 and "current" in runs  # the current run, the previous one and the link
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.partial"))


def test_files_get_the_usual_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        assert _run(_spec_file(tmp_path), tmp_path / "out") == 0
    finally:
        os.umask(old)
    folder = current_folder(tmp_path / "out")
    for name in ("model.quantized.onnx", "report.json", "report.html", "aaq.log"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o644, name
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755


@dataclass
class Failure:
    spec: Callable[[], dict]
    exit_code: int
    phrase: str
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


def _with_algorithm(name: str, **params) -> Callable[[], dict]:
    def make() -> dict:
        spec = base_spec()
        spec["compression"]["algorithms"] = [{"name": name, "params": params}]
        return spec
    return make


def _interrupt_between_the_two_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    real = RunFolder.write

    def write(self, name, data):
        if name == "report.json":
            raise KeyboardInterrupt
        return real(self, name, data)

    monkeypatch.setattr(RunFolder, "write", write)


def _disk_full_at_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    import aaq.output

    def replace_link(link, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(aaq.output, "_replace_link", replace_link)


FAILURES = {
    "summary holds an object": Failure(_with_algorithm("HostileSummary", kind="object"), 2,
                                       "plugin 'HostileSummary' (from module test_hostile_output): its summary "
                                       "cannot be written to report.json"),
    "summary refers to itself": Failure(_with_algorithm("HostileSummary", kind="circular"), 2,
                                        "it refers to itself"),
    "summary holds bytes": Failure(_with_algorithm("HostileSummary", kind="bytes"), 2, "not JSON serializable"),
    "interrupted between the two writes": Failure(base_spec, 130, "interrupted by SIGINT",
                                                  _interrupt_between_the_two_writes),
    "disk full at the switch": Failure(base_spec, 1, "No space left on device", _disk_full_at_the_switch),
    "data error mid-run": Failure(lambda: {**base_spec(), "engine": {**base_spec()["engine"], "metrics": [
        {"name": "mse", "type": "mse"}]}}, 2, "metric 'mse'"),
}


@pytest.mark.parametrize("case", FAILURES.values(), ids=FAILURES.keys())
def test_a_failed_run_publishes_nothing_and_its_log_says_why(tmp_path: Path, capsys, monkeypatch,
                                                            case: Failure) -> None:
    out = tmp_path / "out"
    assert _run(_spec_file(tmp_path, name="good.json"), out) == 0
    before = _snapshot(out)
    if case.patch is not None:
        case.patch(monkeypatch)
    capsys.readouterr()
    assert _run(_spec_file(tmp_path, case.spec()), out) == case.exit_code
    err = capsys.readouterr().err
    assert case.phrase in err and "Traceback" not in err
    monkeypatch.undo()
    assert _snapshot(out) == before and _pair(out)[0] == _pair(out)[1]
    failed = list((out / ".runs").glob("*.failed"))
    assert len(failed) == 1 and [p.name for p in failed[0].iterdir()] == ["aaq.log"]
    log = (failed[0] / "aaq.log").read_text()
    assert ("interrupted" in log or "run failed" in log) and "nothing was published" in log
    assert str(failed[0] / "aaq.log") in err
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.partial"))


def test_two_runs_into_one_directory_never_mix_their_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = RunFolder.create(out, names=["m.onnx", "report.json"])
    second = RunFolder.create(out, names=["m.onnx", "report.json"])
    assert first.path != second.path
    first.write("m.onnx", b"model 1")
    second.write("m.onnx", b"model 2")
    second.write("report.json", b"report 2")
    second.commit()  # prunes what it may: never a folder another run is writing into
    assert first.path.exists()
    assert (out / "m.onnx").read_bytes() == b"model 2" and (out / "report.json").read_bytes() == b"report 2"
    first.write("report.json", b"report 1")
    first.commit()
    assert (out / "m.onnx").read_bytes() == b"model 1" and (out / "report.json").read_bytes() == b"report 1"


def test_write_files_is_the_hook_for_more_files_in_the_pair(tmp_path: Path) -> None:
    result = Pipeline(base_spec(), progress=False).run()
    path = result.save(tmp_path / "out", extra_files={"report.html": b"<html></html>"})
    assert (tmp_path / "out" / "report.html").read_bytes() == b"<html></html>"
    assert path.parent / "report.html" == tmp_path / "out" / "report.html"
    assert write_files(tmp_path / "out", {"a.txt": b"a"}) == {"a.txt": tmp_path / "out" / "a.txt"}
    assert not (tmp_path / "out" / "report.html").exists()  # a pair is replaced whole
    with pytest.raises(BadInputError, match="not a plain file name"):
        write_files(tmp_path / "out", {"../x": b"x"})


def test_a_link_of_a_previous_run_with_another_model_name_goes_away(tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = base_spec()
    spec["model"]["name"] = "first"
    assert _run(_spec_file(tmp_path, spec), out) == 0
    spec["model"]["name"] = "second"
    assert _run(_spec_file(tmp_path, spec), out) == 0
    assert sorted(p.name for p in out.iterdir()) == [".runs", "aaq.log", "report.html", "report.json",
                                                     "second.quantized.onnx"]


BAD_OUTPUT_DIRS = {
    "a file": lambda tmp: (tmp / "file").write_text("x") and tmp / "file",
    "under a file": lambda tmp: (tmp / "file").write_text("x") and tmp / "file" / "out",
    "report.json is a directory": lambda tmp: (tmp / "out" / "report.json").mkdir(parents=True) or tmp / "out",
}


@pytest.mark.parametrize("make", BAD_OUTPUT_DIRS.values(), ids=BAD_OUTPUT_DIRS.keys())
def test_an_output_directory_that_cannot_be_one_is_exit_2(tmp_path: Path, capsys, make) -> None:
    out = make(tmp_path)
    assert _run(_spec_file(tmp_path), out) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "Traceback" not in err and "internal error" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_output_directory_that_is_not_writable_is_exit_2(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ro"
    out.mkdir(mode=0o555)
    assert _run(_spec_file(tmp_path), out) == 2
    assert "not writable" in capsys.readouterr().err


# ---------------------------------------------------------------- class 3: signals

SIGNALS = {name: getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")}


@pytest.mark.parametrize("signum", SIGNALS.values(), ids=SIGNALS.keys())
def test_a_signal_mid_run_exits_128_plus_n_and_publishes_nothing(tmp_path: Path, capsys, signum: int) -> None:
    out = tmp_path / "out"
    assert _run(_spec_file(tmp_path, name="good.json"), out) == 0
    before = _snapshot(out)
    handlers = {s: signal.getsignal(s) for s in SIGNALS.values()}
    capsys.readouterr()
    assert _run(_spec_file(tmp_path, _with_algorithm("HostileSignal", signum=int(signum))()), out) == 128 + signum
    err = capsys.readouterr().err
    name = signal.Signals(signum).name
    assert f"aaq: interrupted by {name}; nothing half-written was left" in err and "Traceback" not in err
    assert _snapshot(out) == before
    log = next((out / ".runs").glob("*.failed")).joinpath("aaq.log").read_text()
    assert f"run interrupted by {name}" in log
    assert {s: signal.getsignal(s) for s in SIGNALS.values()} == handlers


def test_sigterm_from_outside_ends_a_run_quietly(tmp_path: Path) -> None:
    flag = tmp_path / "started"
    spec = _with_algorithm("HostileSleep", flag=str(flag))()
    spec_path = _spec_file(tmp_path, spec)
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(ROOT / 'tests')!r}, {str(ROOT)!r}]
        import test_hostile_output
        from aaq.cli import main
        sys.exit(main(["run", {str(spec_path)!r}, "--output-dir", {str(tmp_path / 'out')!r}, "--no-progress"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not flag.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "report.json").exists()
    assert not list((tmp_path / "out").rglob("*.onnx"))


def test_the_folder_of_a_run_that_died_is_pruned_once_stale(tmp_path: Path) -> None:
    out = tmp_path / "out"
    dead = RunFolder.create(out, names=["m.onnx"])
    dead.write("m.onnx", b"half")
    os.close(dead._lock)  # the process is gone: its lock with it
    dead._lock = None
    alive = RunFolder.create(out, names=["m.onnx"])
    old = time.time() - 3600
    for folder in (dead.path, alive.path):
        os.utime(folder, (old, old))
    done = RunFolder.create(out, names=["m.onnx"])
    done.write("m.onnx", b"whole")
    done.commit()
    assert not dead.path.exists() and alive.path.exists()
    assert (out / "m.onnx").read_bytes() == b"whole"
