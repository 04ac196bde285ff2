import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def session_runs(monkeypatch) -> list:
    """Every ``InferenceSession.run`` call in the test."""
    calls: list = []
    real = ort.InferenceSession.run

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", counting)
    return calls
