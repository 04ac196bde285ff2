"""Sections of report.html (outcome, DefaultQuantization, time) and the readers every section shares.

Each section is a function of the report dict returning HTML ("" when it does not
apply). Fields are read with defaults and checked types: a report from an older
aaq, or one an algorithm is still growing, draws what it has. The search's sections
are in ``aaq.report_search``.
"""
from __future__ import annotations

from html import escape
from typing import Any

from aaq.report_svg import Bar, band_chart, bar_chart, figure, flag, num, stacked_bar, table, td

AAQ = "AccuracyAwareQuantization"
DQ = "DefaultQuantization"


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def record(report: dict, name: str) -> dict | None:
    found = [a for a in report.get("algorithms", []) if a.get("name") == name]
    return found[-1] if found else None


def summary(report: dict, name: str) -> dict:
    return (record(report, name) or {}).get("summary") or {}


def seconds_text(v: Any) -> str:
    return "—" if not is_num(v) else f"{v:.2f} s" if v < 60 else f"{v / 60:.1f} min"


def _bytes(v: Any) -> str:
    if not is_num(v):
        return "—"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= size:
            return f"{v / size:.2f} {unit}"
    return f"{int(v)} B"


def group_layers(report: dict) -> dict[str, list[str]]:
    """Layers per group id: from the final plan when the report has it, else from the reverted entries."""
    out: dict[str, list[str]] = {}
    aaq = summary(report, AAQ)
    for g in (aaq.get("plan") or {}).get("groups") or []:
        if isinstance(g, dict) and "id" in g:
            out[str(g["id"])] = list(g.get("layers") or [])
    for r in aaq.get("reverted") or []:
        out.setdefault(str(r.get("group")), list(r.get("layers") or []))
    return out


def reverted_groups(aaq: dict) -> set[str]:
    groups = {str(r.get("group")) for r in aaq.get("reverted") or []}
    return groups | {str(g.get("id")) for g in (aaq.get("plan") or {}).get("groups") or []
                     if isinstance(g, dict) and g.get("reverted")}


# ------------------------------------------------------------------------------------------ outcome


def _latency(report: dict) -> dict | None:
    for rec in reversed(report["algorithms"]):
        latency = (rec.get("summary") or {}).get("latency")
        if isinstance(latency, dict) and is_num(latency.get("ratio")):
            return latency
    return None


def _quartiles(latency: dict) -> tuple[float | None, float | None]:
    low, high = (list(latency.get("ratio_quartiles") or []) + [None, None])[:2]
    return (low, high) if is_num(low) and is_num(high) else (None, None)


def _cards(report: dict, aaq: dict) -> str:
    targets = aaq.get("metrics") or {}
    cards = []
    for name, m in report["metrics"].items():
        allowed, met = (targets.get(name) or {}).get("allowed_drop"), _met(report, targets, name)
        cards.append(f'<div class="card {"" if met is None else "met" if met else "missed"}"><h3>{escape(name)} drop'
                     f'</h3><p class="big">{num(m.get("drop"), signed=True)}</p><p>'
                     f'{"allowed " + num(allowed) if allowed is not None else "no allowed drop set"}'
                     f'{"" if met is None else " · met" if met else " · NOT met"}</p></div>')
    latency = _latency(report)
    if latency:
        low, high = _quartiles(latency)
        noise = low is not None and low <= 1.0 <= high
        band = f"per-round x{low:.2f}–x{high:.2f}" if low is not None else "no noise band"
        cards.append(f'<div class="card {"missed" if latency.get("slower_than_float") and not noise else ""}">'
                     f'<h3>Latency</h3><p class="big">x{latency["ratio"]:.2f}</p><p>of float; {band}'
                     f'{": within noise" if noise else ""}</p></div>')
    model = report.get("model") or {}
    size, float_size = model.get("bytes"), model.get("float_file_bytes")
    ratio = (f"x{size / float_size:.2f} of the spec's float model file ({_bytes(float_size)})"
             if is_num(size) and is_num(float_size) and float_size else "float model size not in this report")
    cards.append(f'<div class="card"><h3>Model size</h3><p class="big">{_bytes(size)}</p><p>{ratio}</p></div>')
    if aaq:
        total = (aaq.get("groups_quantized") or 0) + (aaq.get("groups_reverted") or 0)
        cards.append(f'<div class="card"><h3>Groups in float</h3><p class="big">{aaq.get("groups_reverted", "—")}'
                     f' of {total}</p><p>reverted by the search</p></div>')
    return '<div class="cards">' + "".join(cards) + "</div>"


def _met(report: dict, targets: dict, name: str) -> bool | None:
    return (targets.get(name) or {}).get("met", (report.get("targets") or {}).get(name))


def _drop_bar(name: str, drop: float, interval: dict | None, over: bool, allowed: float | None) -> Bar:
    """A metric's drop, with its confidence interval as an error bar when one was computed."""
    title = f"{name}: drop {drop:+.4f}"
    low = high = None
    if interval and is_num(interval.get("low")) and is_num(interval.get("high")):
        low, high = interval["low"], interval["high"]
        title += f", {interval['level']:.0%} interval [{low:+.4f}, {high:+.4f}] on {interval['samples']} samples"
    title += f", allowed {allowed:.4f}" if allowed is not None else ""
    return Bar(name, drop, title, marked=over, limit=allowed, low=low, high=high)


def outcome(report: dict) -> str:
    aaq = summary(report, AAQ)
    targets = aaq.get("metrics") or {}
    rows, bars = [], []
    for name, m in report["metrics"].items():
        t, drop = targets.get(name) or {}, m.get("drop")
        allowed, met = t.get("allowed_drop"), _met(report, targets, name)
        rows.append(td(name) + td("higher" if m.get("higher_is_better", True) else "lower")
                    + td(t.get("reference", m.get("reference", m.get("float"))))
                    + td(t.get("reference_kind", m.get("reference_kind", "measured"))) + td(m.get("float"))
                    + td(m.get("quantized"))
                    + td(drop, signed=True) + td(allowed) + flag(met))
        if is_num(drop):
            limit = allowed if is_num(allowed) else None
            bars.append(_drop_bar(name, drop, m.get("interval"), met is False, limit))
            held = m.get("held_out")
            if held and is_num(held.get("point")):
                bars.append(_drop_bar(f"{name} (held-out)", held["point"], held, held["low"] > allowed
                                      if is_num(allowed) else False, limit))
    out = []
    if aaq.get("stop_reason") and not report.get("target_met"):
        out.append(f'<p class="banner missed">The search stopped: {escape(str(aaq["stop_reason"]))}. The best '
                   f"model found was written.</p>")
    out.append(_cards(report, aaq))
    metrics = table(["metric", "better", "reference", "reference is", "float", "final", "drop", "allowed drop",
                     "met"], rows, "metrics")
    if bars:
        limits = any(b.limit is not None for b in bars)
        out.append(figure("drops", bar_chart(bars, label="drop per metric against the allowed drop",
                                             axis_label="drop (positive: worse than float)", marked_note="over",
                                             marked_class="over"),
                          "Drop of the final model per metric on the full dataset"
                          + ("; the dashed tick is the drop allowed" if limits else
                             "; no algorithm set an allowed drop")
                          + ("; the capped bar is the drop's confidence interval (held-out: on the samples the "
                             "search never saw)." if any(b.low is not None for b in bars) else "."), metrics))
    else:
        out.append(metrics)
    latency = _latency(report)
    if latency:
        low, high = _quartiles(latency)
        out.append(figure("latency", band_chart(latency["ratio"], low, high, label="latency against float",
                                                    axis_label="final / float latency (band: quartiles of the "
                                                               "per-round ratios)"),
                          escape(str(latency.get("statement", ""))),
                          table(["float ms", "final ms", "ratio", "ratio quartiles", "runs", "batch"],
                                [td(latency.get("float_ms"), 3) + td(latency.get("final_ms"), 3)
                                 + td(latency["ratio"], 3) + td([low, high] if low is not None else None, 3)
                                 + td(latency.get("runs")) + td(latency.get("batch_size"))])))
    model = report.get("model") or {}
    out.append(table(["file", "nodes", "QuantizeLinear", "DequantizeLinear", "bytes", "float file bytes"],
                     [td(model.get("file")) + td(model.get("nodes")) + td(model.get("quantize_linear"))
                      + td(model.get("dequantize_linear")) + td(model.get("bytes"))
                      + td(model.get("float_file_bytes"))], "model"))
    return "".join(out)


# ------------------------------------------------------------------------------------------ DefaultQuantization


_DECISION_COLOURS = {"int8": 0, "float: reverted by the search": 5, "float: latency": 1, "float: ignored": 3,
                     "float: dtype": 4, "float: not quantizable": 7}


def _why_float(reason: str) -> str:
    if reason.startswith("latency"):
        return "latency"
    if "float32" in reason:
        return "dtype"
    return "ignored" if reason.startswith("ignored") else "not quantizable"


def _facts(dq: dict) -> str:
    prep = dq.get("preparation") or {}
    facts = [("preset", dq.get("preset")), ("calibration samples", dq.get("calibration_samples")),
             ("layers quantized", dq.get("layers_quantized")),
             ("groups", dq.get("groups")), ("activation quantizers", dq.get("activation_quantizers")),
             ("output quantizers", dq.get("output_quantizers")), ("bias corrections", dq.get("bias_corrections")),
             ("weights", "7-bit range (this CPU's int8 kernels saturate)" if dq.get("weights_reduce_range")
              else "8-bit"),
             ("opset", f"{prep.get('opset_from', '—')} → {prep.get('opset', '—')}"),
             ("BatchNorms folded", len(prep.get("folded_batchnorms") or [])),
             ("nodes simplified away", sum(v for v in (prep.get("simplified") or {}).values() if is_num(v)))]
    return table(["", ""], [f"<th>{escape(k)}</th>" + td(v) for k, v in facts], "facts")


def quantization(report: dict) -> str:
    dq = summary(report, DQ)
    if not dq:
        return ""
    by_search = {layer: str(r.get("group")) for r in summary(report, AAQ).get("reverted") or []
                 for layer in r.get("layers") or []}
    corrected = set(dq.get("bias_corrected_layers") or [])
    counts = {"int8": 0, "float: reverted by the search": 0}
    rows = []
    for layer in dq.get("layers") or []:
        if layer in by_search:
            counts["float: reverted by the search"] += 1
            rows.append(td(layer) + '<td class="bad">float</td>' + td(f"reverted by {AAQ} (group {by_search[layer]})"))
        else:
            counts["int8"] += 1
            rows.append(td(layer) + '<td class="ok">int8</td>' + td("bias corrected" if layer in corrected else ""))
    skipped = {**{n: f"ignored ({r})" for n, r in (dq.get("ignored") or {}).items()}, **(dq.get("not_quantized") or {})}
    for layer, reason in skipped.items():
        why = _why_float(str(reason))
        counts[f"float: {why}"] = counts.get(f"float: {why}", 0) + 1
        rows.append(td(layer) + '<td class="bad">float</td>'
                    + td(reason if str(reason).startswith(why) else f"{why}: {reason}"))
    parts = [(k, float(v)) for k, v in counts.items() if v]
    colours = [_DECISION_COLOURS.get(k, 7) for k, _ in parts]  # reverted: the colour of reverted bars
    return _facts(dq) + figure("layers", stacked_bar(parts, label="layers by decision", unit="layers",
                                                     colours=colours),
                               "Every layer DefaultQuantization considered, by what became of it.",
                               table(["layer", "runs in", "why"], rows, "decisions"))


# ------------------------------------------------------------------------------------------ time


def _aaq_split(aaq: dict) -> tuple[float, float, bool]:
    """Seconds of full-set evaluations and of ranking inside AAQ; exact when the report splits them.

    Otherwise the evaluation seconds are split by samples inferred (same models, same
    engine: about the same cost per sample), and the page says it is an estimate.
    """
    ev = aaq.get("evaluations") or {}
    seconds = ev.get("seconds") or 0.0
    if is_num(ev.get("ranking_seconds")):
        return seconds - ev["ranking_seconds"], ev["ranking_seconds"], True
    full, subset = ev.get("full_samples_inferred") or 0, ev.get("subset_samples_inferred") or 0
    share = full / (full + subset) if full + subset else 1.0
    return seconds * share, seconds * (1 - share), False


def _time_parts(report: dict) -> tuple[list[tuple[str, float]], bool]:
    """Algorithm timers (one run by another is inside it, and subtracted), AAQ's own split, the rest of the run."""
    in_spec = {a.get("name") for a in ((report.get("spec") or {}).get("compression") or {}).get("algorithms") or []}
    parts: list[tuple[str, float]] = []
    nested, top, estimated = 0.0, 0.0, False
    for rec in report["algorithms"]:
        name, seconds = rec.get("name", "?"), rec.get("seconds") or 0.0
        label = name + (" (calibration, ranges, QDQ)" if name == DQ else "")
        if in_spec and name not in in_spec:  # AAQ's base_algorithm, run inside it
            nested += seconds
            parts.append((label, seconds))
            continue
        top += seconds
        if name == AAQ:
            s = rec.get("summary") or {}
            full, ranking, exact = _aaq_split(s)
            estimated = not exact
            latency = max(seconds - (s.get("seconds") or seconds), 0.0)  # measured after the search's timer stops
            mark = "" if exact else " ≈"
            parts += [("full-set evaluations" + mark, full), ("ranking" + mark, ranking), ("latency check", latency),
                      ("search: building models, bookkeeping", max(seconds - nested - full - ranking - latency, 0.0))]
        else:
            parts.append((label, max(seconds - nested, 0.0)))
        nested = 0.0
    total = (report.get("totals") or {}).get("seconds")
    if is_num(total):
        parts.append(("outside the algorithms (loading, float and final evaluations)", max(total - top, 0.0)))
    return parts, estimated


def _model_names(report: dict, evals: list[dict]) -> dict[str, str]:
    """"float" and "final" for the digests whose full-set values are those of report.json's metrics."""
    names: dict[str, str] = {}
    for key, label in (("float", "float"), ("quantized", "final")):
        want = {n: m.get(key) for n, m in report["metrics"].items()}
        if not want or not all(is_num(v) for v in want.values()):
            continue
        order = evals if key == "float" else list(reversed(evals))  # the float model's is the first, the final's last
        hit = next((e.get("model_digest") for e in order if e.get("full") and e.get("values") == want), None)
        if hit is not None:
            names[hit] = "float = final" if hit in names else label
    return names


def _evaluation_tables(report: dict, evals: list[dict]) -> str:
    kinds: dict[str, list[dict]] = {"full set": [], "stopped once decided": [], "subset": []}
    for e in evals:
        kinds["full set" if e.get("full") else "stopped once decided" if not e.get("complete", True)
              else "subset"].append(e)
    counts = [td(k) + td(len(v)) + td(sum(1 for e in v if e.get("inferred") == 0))
              + td(sum(int(e.get("inferred") or 0) for e in v)) + td(sum(e.get("seconds") or 0.0 for e in v), 3)
              for k, v in kinds.items()]
    names = _model_names(report, evals)
    rows = [td(i) + td(names.get(e.get("model_digest"), str(e.get("model_digest", ""))[:12]))
            + td("full set" if e.get("full") else "stopped early" if not e.get("complete", True) else "subset")
            + td(e.get("samples")) + td(e.get("inferred")) + td(e.get("seconds"), 3)
            + td(", ".join(f"{k} {num(v)}" for k, v in (e.get("values") or {}).items()))
            for i, e in enumerate(evals)]
    return ("<h3>Evaluations, by kind</h3>"
            + table(["kind", "evaluations", "served from cache", "samples inferred", "seconds"], counts, "counts")
            + '<p class="note">A full-set evaluation stops once its question is decided (is the target met? is it '
              "worse than the current model?); ranking also evaluates models on the whole set to pick its subset.</p>"
            + f'<details class="more bulk"><summary>all {len(evals)} evaluations</summary>'
            + table(["#", "model", "kind", "samples", "inferred", "seconds", "values"], rows, "evaluations")
            + "</details>")


def time(report: dict) -> str:
    parts, estimated = _time_parts(report)
    total = (report.get("totals") or {}).get("seconds")
    rows = [td(n) + td(v, 3) + td(100 * v / total if is_num(total) and total else None, 1) for n, v in parts]
    note = (" ≈: this report does not split AccuracyAwareQuantization's evaluation time between the full set and "
            "ranking, so it is split by samples inferred.") if estimated else ""
    evals = [e for e in report.get("evaluations") or [] if isinstance(e, dict)]
    return (figure("time-chart", stacked_bar(parts, label="where the time went"),
                   f"Run time {seconds_text(total)}, by part.{note}", table(["part", "seconds", "% of run"], rows,
                                                                            "time"))
            + _evaluation_tables(report, evals))
