"""The samples' own code: the plugin algorithm and the OCR metric plugin, on data made here."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from aaq import Pipeline
from aaq.algorithms.base import algorithms

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@pytest.fixture(scope="module")
def edge_float():
    sys.path.insert(0, str(SAMPLES / "custom_algorithm"))
    try:
        import aaq_edge_float
    finally:
        sys.path.pop(0)
    if "KeepEdgesFloat" not in algorithms:
        algorithms.register("KeepEdgesFloat", aaq_edge_float.KeepEdgesFloat, source="module aaq_edge_float")
    return aaq_edge_float


def test_keep_edges_float_reverts_the_first_and_last_layers(edge_float) -> None:
    result = Pipeline(SAMPLES / "custom_algorithm" / "spec.json", progress=False).run()
    assert result.algorithms[-1].summary["reverted"] == [["conv1"], ["fc"]]
    ops = [(n.op_type, n.name) for n in result.model.graph.node]
    quantized_inputs = {n.name for n in result.model.graph.node if n.op_type in ("Conv", "Gemm")
                        and any("dequantized" in i for i in n.input)}
    assert quantized_inputs == {"conv2"}, ops
    assert result.metrics["top1"].drop < 0.02


def _ocr():
    sys.path.insert(0, str(SAMPLES / "text_recognition"))
    try:
        import ocr_metrics
    finally:
        sys.path.pop(0)
    return ocr_metrics


@pytest.mark.parametrize("a, b, distance", [("", "", 0), ("abc", "abc", 0), ("abc", "abd", 1),
                                            ("kitten", "sitting", 3), ("", "xyz", 3), ("ab", "ba", 2)])
def test_edit_distance(a: str, b: str, distance: int) -> None:
    assert _ocr().edit_distance(a, b) == distance


def test_ctc_greedy_merges_repeats_and_drops_blanks(tmp_path: Path) -> None:
    ocr = _ocr()
    charset_file = tmp_path / "charset.txt"
    charset_file.write_text("<blank>\na\nb\n \n")
    charset = ocr.load_charset(charset_file)
    assert charset == ["<blank>", "a", "b", " "]
    steps = [1, 1, 0, 1, 2, 2, 3, 0, 0, 2]                # a a _ a b b ' ' _ _ b  ->  "aab b"
    logits = np.eye(4)[np.array(steps)][None]
    assert ocr.ctc_greedy(logits, charset) == ["aab b"]
    metric = ocr.CharacterAccuracy(charset=charset_file)
    assert metric.score({"y": logits}, ["aabb"]).tolist() == [1.0]      # spaces ignored
    assert metric.score({"y": logits}, ["aaab"]).tolist() == [0.75]
    assert ocr.LineAccuracy(charset=charset_file).score({"y": logits}, ["aab c"]).tolist() == [0.0]


def test_natural_width_lines_are_whole_feeds_of_their_own_width(tmp_path: Path) -> None:
    sys.path.insert(0, str(SAMPLES / "text_recognition"))
    try:
        import natural_width
    finally:
        sys.path.pop(0)
    widths = [5, 9, 3]
    pixels = np.concatenate([np.full((3, 48, w), i, np.float32) for i, w in enumerate(widths)], axis=2)
    np.savez(tmp_path / "lines.npz", pixels=pixels, offsets=np.cumsum([0] + widths), text=np.array(["a", "bc", "d"]))
    lines = natural_width.lines(str(tmp_path / "lines.npz"))    # an absolute path is kept as it is
    assert len(lines) == 3
    feed, text = natural_width.to_feed(lines[1])
    assert feed["x"].shape == (1, 3, 48, 9) and np.all(feed["x"] == 1) and text == "bc"


def test_custom_strategy_falls_back_from_the_output_side() -> None:
    from aaq.tuning.strategies import strategies

    sys.path.insert(0, str(SAMPLES / "custom_strategy"))
    try:
        import aaq_tail_fallback
    finally:
        sys.path.pop(0)
    if "tail_fallback" not in strategies:
        strategies.register("tail_fallback", aaq_tail_fallback.TailFallback, source="module aaq_tail_fallback")
    result = Pipeline(SAMPLES / "custom_strategy" / "spec.json", progress=False).run()
    summary = result.algorithms[-1].summary
    assert [t["config"]["fallback"] for t in summary["trials"]] == [[], ["fc"]]
    assert summary["exit"] == "criterion met" and result.target_met
    assert summary["trials"][-1]["phase"] == "tail fallback"
