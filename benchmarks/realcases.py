"""Make sure a real benchmark case (model + labeled data) exists, and say where it is.

The cases and their preparation scripts live in ``../shared/realcases`` beside the
repository (tools for measuring only: the ``aaq`` package never reads them). The
first call for a case installs what its script needs and runs it; later calls only
read the existing files.

Installing is careful: the requirements files pin numpy / onnx / onnxruntime to the
versions their README was measured with, and blindly installing them would replace
the versions this environment (and aaq's tests) run on. A requirement whose
distribution is already installed is therefore left as it is; only missing ones
(pillow, matplotlib and the rapidocr wheel, which is installed ``--no-deps`` because
only the .onnx files inside it are used) are installed.

Usage:  python benchmarks/realcases.py ppocr_cls [OUT_DIR]
"""
from __future__ import annotations

import importlib.metadata
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "realcases"
DEFAULT_OUT = REPO / "benchmarks" / "out" / "realcases"
CASES = ("ppocr_cls", "ppocr_rec")
RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
# Labels of each case, as realcases_eval.py documents them.
LABELS = {"ppocr_cls": "y", "ppocr_rec": "text"}
METRIC = {"ppocr_cls": "top-1 accuracy (argmax of the output vs y)",
          "ppocr_rec": "character accuracy of CTC greedy decoding with the npz charset vs text"}


def prepare(case: str, out_dir: Path = DEFAULT_OUT) -> dict:
    """Ensure ``out_dir/<case>.onnx`` and ``.npz`` exist; return their paths and the npz contract.

    Returned keys: ``case``, ``model`` and ``data`` (paths), ``input_names``,
    ``eval_inputs`` / ``calib_inputs`` ({model input: npz key}), ``labels`` (npz key),
    ``n_eval``, ``n_calib``, ``metric`` (what realcases_eval.py measures).
    """
    if case not in CASES:
        raise ValueError(f"unknown case {case!r}; known: {', '.join(CASES)}")
    out_dir = Path(out_dir)
    model, data = out_dir / f"{case}.onnx", out_dir / f"{case}.npz"
    if not (model.exists() and data.exists()):
        script = SHARED / f"prepare_{case}.py"
        if not script.exists():
            raise FileNotFoundError(f"{script} is missing: the real cases need ../shared beside the repo")
        _install(case)
        out_dir.mkdir(parents=True, exist_ok=True)
        logger.info("preparing %s into %s", case, out_dir)
        subprocess.run([sys.executable, str(script), str(out_dir)], check=True)
    return describe(case, model, data)


def cut(info: dict, path: Path, n_eval: int | None = None, n_calib: int | None = None) -> Path:
    """The case's npz written uncompressed to ``path`` (so it streams), keeping the first ``n_eval``
    evaluation samples (inputs and labels) and the first ``n_calib`` calibration samples (None: all)."""
    with np.load(info["data"], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for key in list(arrays):
        if n_eval is not None and (key.startswith("x__") or key in LABELS.values()):
            arrays[key] = arrays[key][:n_eval]
        elif n_calib is not None and key.startswith("calib__"):
            arrays[key] = arrays[key][:n_calib]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def describe(case: str, model: Path, data: Path) -> dict:
    """The npz contract of a prepared case, read from the file (only the small arrays are loaded)."""
    with np.load(data, allow_pickle=False) as z:
        names = [str(n) for n in z["input_names"]]
        shapes = {k: z[k].shape for k in (f"x__{names[0]}", f"calib__{names[0]}")}
    return {
        "case": case, "model": model, "data": data, "input_names": names,
        "eval_inputs": {n: f"x__{n}" for n in names},
        "calib_inputs": {n: f"calib__{n}" for n in names},
        "labels": LABELS[case],
        "n_eval": shapes[f"x__{names[0]}"][0], "n_calib": shapes[f"calib__{names[0]}"][0],
        "metric": METRIC[case],
    }


def _install(case: str) -> None:
    missing = [r for r in _requirements(SHARED / f"requirements-{case}.txt") if not _installed(r)]
    if not _installed(RAPIDOCR):
        _pip(["--no-deps", RAPIDOCR])
    if missing:
        _pip(missing)


def _requirements(path: Path) -> list[str]:
    """Requirement lines of ``path``, following ``-r`` includes, without comments."""
    out: list[str] = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r"):
            out += _requirements(path.parent / line[2:].strip())
        else:
            out.append(line)
    return out


def _installed(requirement: str) -> bool:
    name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _pip(args: list[str]) -> None:
    logger.info("pip install %s", " ".join(args))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *args], check=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    info = prepare(sys.argv[1] if len(sys.argv) > 1 else "ppocr_cls",
                   Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_OUT)
    print({k: str(v) for k, v in info.items()})
