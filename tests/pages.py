"""Helpers of the report page's tests: report.html read as elements and table cells (stdlib only), a report.

``synthetic_report`` has every section's fields, in the shapes the algorithms are
growing into (every ranking, the final plan, a Tuning record with trials).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from aaq.version import __version__

ROOT = Path(__file__).resolve().parents[1]
AAQ_SPEC = ROOT / "algorithms_specs" / "AccuracyAwareQuantization.json"

VOID = {"meta", "br", "img", "input", "link", "hr"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    parent: "Element | None" = None
    children: list["Element"] = field(default_factory=list)
    text: str = ""

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)

    def find(self, tag: str, *classes: str, id: str | None = None) -> list["Element"]:
        """Descendants with this tag (``*``: any), all of these classes, and this id."""
        out = []
        for child in self.children:
            if (tag in ("*", child.tag) and set(classes) <= child.classes
                    and (id is None or child.attrs.get("id") == id)):
                out.append(child)
            out += child.find(tag, *classes, id=id)
        return out

    def one(self, tag: str, *classes: str, id: str | None = None) -> "Element":
        found = self.find(tag, *classes, id=id)
        assert len(found) == 1, f"{len(found)} <{tag} class={classes} id={id}> found"
        return found[0]

    def rows(self) -> list[list["Element"]]:
        """A table's body rows, as lists of their cells."""
        return [[c for c in tr.children if c.tag in ("td", "th")] for tr in self.find("tr") if tr.parent.tag == "tbody"]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(element)
        if tag not in VOID:
            self.current = element

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Element(tag, {k: v or "" for k, v in attrs}, self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.text += data  # mixed content loses its order; enough to find words in a cell


def parse(html: str) -> Element:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root


def table_values(table: Element, column: int) -> list[str]:
    """The ``data-value`` (exact number) of one column, else its text."""
    return [row[column].attrs.get("data-value", row[column].all_text()) for row in table.rows()]


def ranked_groups(aaq_summary: dict) -> int:
    """Bars the first sensitivity chart must have: the first ranking's groups (older reports: the groups tried)."""
    rankings = aaq_summary["rankings"]
    if isinstance(rankings, list):
        return len(rankings[0]["scores"])
    return len({str(s["group"]) for s in aaq_summary["steps"]} | {str(r["group"]) for r in aaq_summary["reverted"]})


def synthetic_report() -> dict:
    """A report in the shape AccuracyAwareQuantization is growing into (rankings, plan), plus a Tuning record."""
    groups = [{"id": g, "layers": [f"conv{g}", f"relu{g}"] if g == 3 else [f"conv{g}"], "quantizers": [],
               "reverted": g in (1, 3)} for g in range(5)]
    drops = lambda line: {"top1": line, "top5": line / 2}  # noqa: E731
    return {
        "aaq_version": __version__, "created": "2026-01-01T00:00:00+00:00", "target_met": False,
        "targets": {"top1": False, "top5": True},
        "model": {"file": "m.quantized.onnx", "nodes": 40, "quantize_linear": 8, "dequantize_linear": 12,
                  "bytes": 25_000, "float_file_bytes": 100_000},
        "metrics": {"top1": {"float": 0.9, "quantized": 0.87, "higher_is_better": True, "drop": 0.03},
                    "top5": {"float": 0.99, "quantized": 0.98, "higher_is_better": True, "drop": 0.01}},
        "algorithms": [
            {"name": "DefaultQuantization", "params": {}, "seconds": 2.0, "summary": {
                "preset": "performance", "layers_quantized": 5, "layers": [f"conv{g}" for g in range(5)],
                "groups": 5, "ignored": {"head": "scope"},
                "not_quantized": {"head": "ignored (scope)", "dw": "latency: depthwise conv with 8 channels is "
                                  "slower in int8", "cast_mm": "input 'x' is not float32"},
                "bias_corrected_layers": ["conv0"], "preparation": {"opset_from": 11, "opset": 13}}},
            {"name": "AccuracyAwareQuantization", "params": {"ranking_method": "metric"}, "seconds": 10.0,
             "summary": {
                 "target_met": False, "stop_reason": "max_iter_num reached", "search": "greedy",
                 "metrics": {"top1": {"float": 0.9, "reference": 0.9, "final": 0.87, "drop": 0.03,
                                      "allowed_drop": 0.01, "met": False},
                             "top5": {"float": 0.99, "reference": 0.99, "final": 0.98, "drop": 0.01,
                                      "allowed_drop": 0.02, "met": True}},
                 "groups_quantized": 3, "groups_reverted": 2,
                 "reverted": [{"group": 3, "layers": ["conv3", "relu3"], "score": 0.8},
                              {"group": 1, "layers": ["conv1"], "score": 0.6}],
                 "steps": [{"group": 3, "score": 0.8, "kept": True, "note": "kept", "complete": True,
                            "drops": drops(0.05)},
                           {"group": 0, "score": 0.7, "kept": False, "note": "drop increased: rolled back",
                            "complete": False, "drops": {"top1": [0.06, 0.2], "top5": [0.03, 0.1]}},
                           {"group": 1, "score": 0.6, "kept": True, "note": "kept", "complete": True,
                            "drops": drops(0.03)}],
                 "rankings": [{"metric": "top1", "subset_size": 50, "by": "metric", "reverted": [],
                               "scores": [{"group": g, "score": s} for g, s in
                                          [(3, 0.8), (0, 0.7), (1, 0.6), (2, 0.5), (4, 0.4)]]},
                              {"metric": "top1", "subset_size": 40, "by": "metric", "reverted": [3],
                               "scores": [{"group": 1, "score": 0.6}, {"group": 2, "score": 0.55}]}],
                 "plan": {"groups": groups, "layers": [], "activations": []},
                 "evaluations": {"full": 4, "full_stopped_early": 1, "full_samples_inferred": 300,
                                 "subset": 7, "subset_samples_inferred": 100, "samples_inferred": 400,
                                 "seconds": 8.0, "ranking_seconds": 3.0},
                 "latency": {"float_ms": 2.0, "final_ms": 1.5, "ratio": 0.75, "slower_than_float": False,
                             "ratio_quartiles": [0.7, 0.8], "runs": 9, "batch_size": 8,
                             "statement": "the final model is faster than the float model"},
                 "seconds": 9.5}},
            {"name": "Tuning", "params": {}, "seconds": 1.0, "summary": {
                "exit_case": "max_trials", "best": 1,
                "trials": [{"config": {"preset": "performance"}, "objectives": {"performance": 1.2, "accuracy": 0.8},
                            "accuracy": 0.8, "passed": False, "seconds": 0.3},
                           {"config": {"preset": "mixed"}, "objectives": {"performance": 1.0, "accuracy": 0.88},
                            "accuracy": 0.88, "passed": True, "seconds": 0.3},
                           {"config": {"preset": "mixed", "bias": False}, "objectives": {"performance": 0.9},
                            "accuracy": 0.86, "passed": True, "seconds": 0.4}]}},
        ],
        "evaluations": [
            {"model_digest": "f" * 64, "full": True, "samples": 100, "inferred": 100, "seconds": 1.0,
             "complete": True, "values": {"top1": 0.9, "top5": 0.99}},
            {"model_digest": "q" * 64, "full": True, "samples": 100, "inferred": 100, "seconds": 1.0,
             "complete": True, "values": {"top1": 0.84, "top5": 0.97}},
            {"model_digest": "f" * 64, "full": True, "samples": 100, "inferred": 0, "seconds": 0.0,
             "complete": True, "values": {"top1": 0.9, "top5": 0.99}},
            {"model_digest": "e" * 64, "full": True, "samples": 100, "inferred": 0, "seconds": 0.0,
             "complete": True, "values": {"top1": 0.87, "top5": 0.98}}],
        "totals": {"seconds": 14.0, "evaluations": 4, "samples_inferred": 200},
        "spec": {"model": {"name": "synthetic", "path": "m.onnx"},
                 "compression": {"algorithms": [{"name": "DefaultQuantization"},
                                                {"name": "AccuracyAwareQuantization"}, {"name": "Tuning"}]}},
    }
