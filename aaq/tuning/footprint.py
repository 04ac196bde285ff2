"""Peak memory of one inference, measured in a fresh Python process.

The child imports onnxruntime, resets its peak resident set size to the current one
(Linux: ``/proc/self/clear_refs``; elsewhere the peak so far, ``ru_maxrss``), builds a
session of the model with the engine's providers, runs one batch of the engine's
data and reads the peak (``VmHWM``); the footprint is the peak minus the resident
size before the session: the memory the session (weights, arena, kernels' buffers)
and the inference add at their peak.
A fresh process is the honest place for it: in the running one, freed memory is
reused and ONNX Runtime's native allocations are invisible to ``tracemalloc``. It
costs about a second per model (the child's import of onnxruntime), so it is
measured only for trials that meet the criterion. Needs the ``resource`` module
(Linux, macOS).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from aaq.engine.feeds import fetch
from aaq.errors import AaqError

_CHILD = r"""
import json, resource, sys
import numpy as np
import onnxruntime as ort

def status(key):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(key))

try:  # Linux: reset the high-water mark to the current RSS, so the peak is the inference's own
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before, peak = status("VmRSS:"), lambda: status("VmHWM:")
except OSError:  # elsewhere: the process's peak so far (bytes on macOS, KiB on Linux)
    scale = 1 if sys.platform == "darwin" else 1024
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    before = peak()
session = ort.InferenceSession(sys.argv[1], providers=json.loads(sys.argv[3]))
feed = dict(np.load(sys.argv[2]))
session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})
print(json.dumps({"before": before, "after": peak()}))
"""


def measure_footprint(model: onnx.ModelProto, engine: Any, timeout: float = 120.0) -> int:
    """Bytes the peak RSS of a fresh process grows by when it builds ``model``'s session and runs one batch."""
    size = min(int(engine.batch_size), int(engine.num_samples))
    inputs, _ = fetch(engine.dataset, np.arange(size))
    with tempfile.TemporaryDirectory(prefix="aaq-footprint-") as tmp:
        model_path, data_path = Path(tmp) / "model.onnx", Path(tmp) / "inputs.npz"
        model_path.write_bytes(model.SerializeToString())
        np.savez(data_path, **inputs)
        done = subprocess.run([sys.executable, "-c", _CHILD, str(model_path), str(data_path),
                               json.dumps(list(engine.providers))], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise AaqError(f"footprint measurement failed: {last}")
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    return max(0, int(peaks["after"]) - int(peaks["before"]))
