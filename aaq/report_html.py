"""report.json as one self-contained HTML page: the outcome first, then how the run got there.

``render_report(report) -> str`` is a pure function of the report dict; the page
has inline CSS and SVG (charts: ``aaq.report_svg``; sections: ``aaq.report_sections``
and ``aaq.report_search``), no script from elsewhere and no request at view time,
so it can be mailed, archived and printed. Every chart has its numbers in a table,
with the exact value in ``data-value``.

Reports change shape as algorithms grow: every section reads its fields with
defaults and says what is missing instead of failing; a section that still
cannot be drawn shows a note naming the problem, and the rest of the page is
drawn. Only a file that is not a report at all (not JSON, truncated, another
major version, no outcome) is refused, as a ``ReportError`` (exit 2).

Fields read (keep them, or change the sections with them):

* top level: ``aaq_version``, ``created``, ``target_met``, ``targets``, ``metrics.<m>.{float, quantized,
  drop, higher_is_better, reference, reference_kind}``, ``model.{file, nodes, quantize_linear, dequantize_linear, bytes,
  float_file_bytes}``, ``evaluations[].{model_digest, full, complete, samples, inferred, seconds, values}``
  (the last two: the float and the final model), ``totals.seconds``, ``spec.model.name``,
  ``spec.compression.algorithms[].name``; ``algorithms[].{name, params, seconds, summary}``.
* DefaultQuantization summary: ``preset, calibration_samples, layers_quantized, layers, groups, activation_quantizers,
  output_quantizers, ignored, not_quantized, weights_reduce_range, bias_corrections,
  bias_corrected_layers, preparation.{opset_from, opset, folded_batchnorms, simplified}``.
* AccuracyAwareQuantization summary: ``target_met, stop_reason, search, metrics.<m>.{reference | float,
  allowed_drop, met}, groups_quantized, groups_reverted, reverted[].{group, layers, score},
  steps[].{group, score, kept, note, drops}`` (a drop is a number or ``[low, high]``), ``rankings``
  (``[{metric, subset_size, by, reverted, scores: [{group, score}]}]``, or older: a count), ``plan.groups[].{id,
  layers, reverted}``, ``alternatives.<what>.{tried[].{params, subset_score}, kept}``,
  ``evaluations.{seconds, ranking_seconds?, full_samples_inferred, subset_samples_inferred}``,
  ``latency.{float_ms, final_ms, ratio, slower_than_float, ratio_quartiles, runs, batch_size,
  statement}``, ``seconds`` (the search's timer, stopped before the latency check); the record's
  ``params.ranking_method``.
* Tuning summary: ``trials[].{config, objectives, accuracy, passed, seconds}``, ``best`` (an index, or
  ``{trial | index | config}``), ``exit_case``.
"""
from __future__ import annotations

import copy

import json
import logging
from html import escape
from pathlib import Path
from typing import Any

from aaq.errors import ReportError
from aaq import report_search, report_sections
from aaq.report_sections import AAQ, seconds_text, summary
from aaq.report_timings import merge_times

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("aaq_version", "target_met", "metrics", "algorithms")

# ------------------------------------------------------------------------------------------ input


def load_report(path: str | Path) -> dict[str, Any]:
    """The report at ``path``, checked: a ``ReportError`` naming the file if it is not one aaq can show."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError("file not found", str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"cannot read: {exc}", str(path)) from None
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        end = " (the file ends there: truncated?)" if exc.pos >= len(text.rstrip()) else ""
        raise ReportError(f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}{end}",
                          str(path)) from None
    check_report(report, str(path))
    return report


def check_report(report: Any, source: str | None = None) -> None:
    """Refuse what is not an aaq report of this major version; what it lacks beyond that is drawn as missing."""
    from aaq.version import __version__

    if not isinstance(report, dict):
        raise ReportError(f"not an aaq report: a JSON {type(report).__name__}, not an object", source)
    missing = [k for k in REQUIRED_KEYS if k not in report]
    if missing:
        raise ReportError(f"not an aaq report: no {', '.join(repr(k) for k in missing)} (keys: "
                          f"{', '.join(list(report)[:8]) or 'none'})", source)
    version = str(report["aaq_version"])
    if version.split(".")[0] != __version__.split(".")[0]:
        raise ReportError(f"written by aaq {version}; this is aaq {__version__}, which reads reports of "
                          f"major version {__version__.split('.')[0]} only", source)
    if not isinstance(report["metrics"], dict) or not isinstance(report["algorithms"], list) or not all(
            isinstance(a, dict) for a in report["algorithms"]):
        raise ReportError("not an aaq report: 'metrics' must be an object and 'algorithms' a list of objects",
                          source)


def write_report_html(report_json_path: str | Path, html_path: str | Path | None = None) -> Path:
    """Render the report at ``report_json_path`` (or in that directory) to ``html_path``, atomically.

    ``html_path`` defaults to report.html beside the report.
    """
    from aaq.report import write_bytes_atomic

    source = Path(report_json_path)
    if source.is_dir():  # an output directory: its report.json
        source = source / "report.json"
    target = Path(html_path) if html_path is not None else source.with_suffix(".html")
    page = render_report(load_report(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(target, page.encode("utf-8"))
    return target


# ------------------------------------------------------------------------------------------ page

SECTIONS = [
    ("outcome", "Outcome", report_sections.outcome),
    ("sensitivity", "Sensitivity of each group", report_search.sensitivity),
    ("search", "The search, step by step", report_search.search),
    ("trials", "Tuning trials", report_search.trials),
    ("quantization", "What DefaultQuantization decided", report_sections.quantization),
    ("time", "Evaluations and where the time went", report_sections.time),
]

CSS = """
:root{--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--ok:#1a7f37;--bad:#cf222e}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:#fff}
main{max-width:1080px;margin:0 auto;padding:24px 28px 40px}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:20px;margin:34px 0 10px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:14px;margin:14px 0 6px}
.meta,.note,figcaption,footer{color:var(--muted);font-size:13px}
.met,.ok{color:var(--ok)}.missed,.bad{color:var(--bad)}
.banner{padding:8px 12px;border-left:4px solid var(--bad);background:#fff5f5}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{flex:1 1 180px;border:1px solid var(--line);border-radius:6px;padding:10px 14px}
.card h3{margin:0;color:var(--muted);font-weight:600}.card p{margin:2px 0;font-size:13px}
.card .big{font-size:26px;font-weight:600}
.card.met{border-top:4px solid var(--ok)}.card.missed{border-top:4px solid var(--bad)}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{padding:3px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{font-weight:600}code{font-size:12px}
figure{margin:12px 0 20px}svg.chart{max-width:100%;height:auto;display:block}
details>summary{cursor:pointer;color:var(--muted);font-size:13px}
.chart text{font-size:11px;fill:var(--fg)}.chart .tick,.chart .axis-label{fill:var(--muted)}
.grid{stroke:#eaeef2}.axis{stroke:#8c959f}
.bar{fill:#0072B2}.bar.reverted,.bar.over{fill:#D55E00}
.limit{fill:none;stroke:#1b1f24;stroke-width:2;stroke-dasharray:5 3}.reference{stroke:#1b1f24;stroke-dasharray:3 3}
.band{fill:#56B4E9;opacity:.35}path.step,path.clipped{fill:none;stroke-width:2}.interval{stroke-width:2}
path.ci{fill:none;stroke-width:1.5}path.ci.plain{stroke:#1b1f24}
.s0{fill:#0072B2;stroke:#0072B2}.s1{fill:#E69F00;stroke:#E69F00}.s2{fill:#009E73;stroke:#009E73}
.s3{fill:#CC79A7;stroke:#CC79A7}.s4{fill:#56B4E9;stroke:#56B4E9}.s5{fill:#D55E00;stroke:#D55E00}
.s6{fill:#F0E442;stroke:#F0E442}.s7{fill:#8c959f;stroke:#8c959f}
text.limit-label{stroke:none}.key{margin-right:10px}
.key.s0{color:#0072B2}.key.s1{color:#E69F00}.key.s2{color:#009E73}.key.s3{color:#CC79A7}
.key.s4{color:#56B4E9}.key.s5{color:#D55E00}.key.s6{color:#b8a800}.key.s7{color:#57606a}
.point.rolled-back,.point.failed{fill:#fff;stroke-width:2}.point.chosen{stroke:#1b1f24;stroke-width:3}
.segment{stroke:#fff;stroke-width:1}
@media print{body{font-size:11px}main{max-width:none;padding:0}h2{break-after:avoid}
figure,table,.cards{break-inside:avoid}details>summary{display:none}}
"""

# Printing opens the folded charts and tables (not the list of every evaluation: pages of rows).
_PRINT_SCRIPT = ('<script>addEventListener("beforeprint",()=>document.querySelectorAll("details:not(.bulk)")'
                 ".forEach(d=>d.open=true));</script>")


def _section(sid: str, title: str, build: Any, report: dict) -> str:
    try:
        content = build(report)
    except Exception as exc:  # a field of an unexpected shape: say so, draw the rest
        logger.warning("report.html: section %r not drawn: %s: %s", title, type(exc).__name__, exc)
        content = (f'<p class="note">This section could not be drawn from this report '
                   f"({escape(type(exc).__name__)}: {escape(str(exc))}).</p>")
    return f'<section id="{sid}"><h2>{escape(title)}</h2>{content}</section>' if content else ""


def with_timings(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with what report.json keeps apart under ``timings`` put back where the page reads it.

    report.json holds every measured time (when, how long, latency) in one field so that
    two runs' reports compare equal but for it; the page shows each beside what it timed:
    ``created``, ``totals.seconds``, each algorithm's and evaluation's ``seconds``, each
    algorithm summary's ``latency`` and the seconds inside it (``report_timings``). A report
    without ``timings`` (an older one) is returned as it is.
    """
    timings = report.get("timings")
    if not isinstance(timings, dict):
        return report
    out = copy.deepcopy(report)
    out.setdefault("created", timings.get("created"))
    if isinstance(out.get("totals"), dict):
        out["totals"].setdefault("seconds", timings.get("seconds"))
    for record, timed in zip(out["algorithms"], timings.get("algorithms") or []):
        if isinstance(timed, dict):
            record.setdefault("seconds", timed.get("seconds"))
        latency = (timings.get("latency") or {}).get(record.get("name"))
        if latency is not None and isinstance(record.get("summary"), dict):
            record["summary"].setdefault("latency", latency)
    for record, times in zip(out["algorithms"], timings.get("summaries") or []):
        if times is not None and isinstance(record.get("summary"), (dict, list)):
            merge_times(record["summary"], times)
    for evaluation, seconds in zip(out.get("evaluations") or [], timings.get("evaluations") or []):
        if isinstance(evaluation, dict):
            evaluation.setdefault("seconds", seconds)
    return out


def render_report(report: dict[str, Any]) -> str:
    """The page for ``report`` (a report.json dict): one HTML string, nothing fetched at view time."""
    check_report(report)
    report = with_timings(report)
    name = escape(str((report.get("spec") or {}).get("model", {}).get("name")
                      or (report.get("model") or {}).get("file", "model")))
    met = bool(report.get("target_met"))
    if report.get("targets") or summary(report, AAQ).get("metrics"):
        verdict, cls = ("target met", "met") if met else ("target NOT met", "missed")
    else:
        verdict, cls = "no accuracy target set", ""
    meta = " · ".join([f"aaq {escape(str(report['aaq_version']))}", escape(str(report.get("created", ""))),
                       f"run took {seconds_text((report.get('totals') or {}).get('seconds'))}",
                       escape(" → ".join(str(a.get("name", "?")) for a in report["algorithms"]))])
    body = "".join(_section(sid, title, build, report) for sid, title, build in SECTIONS)
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>aaq: {name}: {verdict}</title><style>{CSS}</style></head><body><main>"
            f'<header><h1>{name}: <span class="{cls}">{verdict}</span></h1><p class="meta">{meta}</p></header>'
            f"{body}<footer>Drawn by <code>python -m aaq report</code> from report.json; every number on this "
            f"page is in that file.</footer></main>{_PRINT_SCRIPT}</body></html>\n")
