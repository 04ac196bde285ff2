"""Engine overhead on a real case: a full evaluation through ``Engine`` vs a bare ONNX Runtime loop.

Target (issue 3): engine time <= 1.10 x bare loop. Both sides start from the model
bytes and the in-memory arrays, build their session with the same options, run the
same batches and compute top-1 accuracy; every repeat uses a fresh Engine, so no
sample is served from its cache. Repeats are interleaved (alternating which side
goes first) and the medians compared.

Usage:  python benchmarks/bench_engine.py [--case ppocr_cls] [--repeats 7] [--batch-size 64]
Writes benchmarks/out/bench_engine.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from aaq.engine import Accuracy, Engine, NpzDataset  # noqa: E402
from aaq.engine.session import session_options  # noqa: E402
import realcases  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def bare_loop(model: bytes, x: np.ndarray, y: np.ndarray, batch: int, name: str) -> float:
    """What a user would write by hand: one session, slices, argmax."""
    session = ort.InferenceSession(model, session_options(0, "all"), providers=["CPUExecutionProvider"])
    hits = 0
    for start in range(0, len(x), batch):
        logits = session.run(None, {name: x[start:start + batch]})[0]
        hits += int(np.sum(logits.argmax(axis=1) == y[start:start + batch]))
    return hits / len(x)


def engine_eval(model: bytes, dataset: NpzDataset, batch: int) -> float:
    engine = Engine(dataset, [Accuracy()], batch_size=batch, progress=False)
    result = engine.evaluate(model)
    assert result.samples_inferred == len(dataset)
    return result.values["top1"]


def timed(fn, *args) -> tuple[float, float]:
    started = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - started, value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="ppocr_cls", choices=["ppocr_cls"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--data-dir", type=Path, default=realcases.DEFAULT_OUT)
    args = ap.parse_args(argv)

    info = realcases.prepare(args.case, args.data_dir)
    model = info["model"].read_bytes()
    (name,) = info["input_names"]
    dataset = NpzDataset.load(info["data"], info["eval_inputs"], info["labels"])
    x, y = dataset.inputs[name], dataset.labels

    # Warm-up: page in the arrays, load ORT's kernels.
    bare_loop(model, x, y, args.batch_size, name)
    engine_eval(model, dataset, args.batch_size)

    times: dict[str, list[float]] = {"engine": [], "bare": []}
    values: dict[str, float] = {}
    for r in range(args.repeats):
        order = ("engine", "bare") if r % 2 == 0 else ("bare", "engine")
        for side in order:
            if side == "engine":
                seconds, values["engine"] = timed(engine_eval, model, dataset, args.batch_size)
            else:
                seconds, values["bare"] = timed(bare_loop, model, x, y, args.batch_size, name)
            times[side].append(seconds)

    med = {side: statistics.median(ts) for side, ts in times.items()}
    ratio = med["engine"] / med["bare"]
    report = {
        "case": args.case, "samples": len(dataset), "batch_size": args.batch_size, "repeats": args.repeats,
        "median_seconds": med, "ratio": ratio, "target_ratio": 1.10, "met": ratio <= 1.10,
        "top1": values, "seconds": times,
        "onnxruntime": ort.__version__, "numpy": np.__version__, "python": platform.python_version(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_engine.json").write_text(json.dumps(report, indent=2))

    print(f"{args.case}: {len(dataset)} samples, batch {args.batch_size}, {args.repeats} interleaved repeats")
    print(f"| {'side':<8} | {'median s':>9} | {'min s':>7} | {'max s':>7} | {'top-1':>6} |")
    print(f"|{'-' * 10}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 8}|")
    for side in ("bare", "engine"):
        ts = times[side]
        print(f"| {side:<8} | {med[side]:9.3f} | {min(ts):7.3f} | {max(ts):7.3f} | {values[side]:6.3f} |")
    print(f"ratio engine / bare = {ratio:.3f} (target <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
