"""Sections of report.html about the search: sensitivity of each group, the steps, tuning trials.

Functions of the report dict returning HTML ("" when the report has no such run).
They read AccuracyAwareQuantization's ``rankings`` (every ranking made; an older
report has only their count, then the scores of the steps stand in), ``plan``
(layers per group), ``steps`` and ``reverted``, and a Tuning record's ``trials``,
``best`` and ``exit`` (the exit case).
"""
from __future__ import annotations

import json
import math
from html import escape
from typing import Any

from aaq.report_sections import AAQ, group_layers, is_num, record, reverted_groups, summary
from aaq.report_svg import Bar, Point, bar_chart, figure, flag, num, point_chart, table, td


# ------------------------------------------------------------------------------------------ sensitivity


def _rankings(aaq: dict) -> tuple[list[dict], str]:
    """Every ranking with its scores; for an older report (a count), the scores of the groups the search tried."""
    found = aaq.get("rankings")
    if isinstance(found, list):
        return [r for r in found if isinstance(r, dict) and isinstance(r.get("scores"), list)], ""
    scores: dict[str, float] = {}
    for entry in list(aaq.get("steps") or []) + list(aaq.get("reverted") or []):
        if is_num(entry.get("score")):
            scores.setdefault(str(entry.get("group")), entry["score"])
    if not scores:
        return [], ""
    ordered = sorted(scores.items(), key=lambda kv: -kv[1])
    note = (f"This report keeps only the scores of the {len(scores)} groups the search tried "
            f"({found if isinstance(found, int) else 'an unknown number of'} ranking(s) were made); "
            f"newer reports keep every ranking.")
    return [{"metric": None, "subset_size": None, "scores": [{"group": g, "score": s} for g, s in ordered]}], note


def _ranking_figure(k: int, count: int, ranking: dict, layers: dict, reverted: set[str]) -> str:
    bars, rows = [], []
    for rank, entry in enumerate(ranking["scores"], 1):
        g, score = str(entry.get("group")), entry.get("score")
        names = layers.get(g, [])
        shown = f"{g}: {names[0]}" + (f" +{len(names) - 1}" if len(names) > 1 else "") if names else g
        title = (f"group {g}: {', '.join(names) or 'layers not in this report'}; score {num(score)}"
                 + ("; in float" if g in reverted else ""))
        bars.append(Bar(shown if len(shown) <= 28 else shown[:27] + "…", score if is_num(score) else math.nan,
                        title, g in reverted))
        rows.append(td(rank) + td(g) + td(", ".join(names) or "—") + td(score)
                    + ('<td class="bad">float</td>' if g in reverted else "<td>int8</td>"))
    already = ranking.get("reverted") if isinstance(ranking.get("reverted"), list) else []
    what = (f"Ranking {k} of {count}" + (f", for {ranking['metric']}" if ranking.get("metric") else "")
            + (f", on {ranking['subset_size']} samples" if ranking.get("subset_size") else "")
            + (f", by {ranking['by'].replace('_', ' ')}" if isinstance(ranking.get("by"), str) else "")
            + (f", with group(s) {', '.join(map(str, already))} already in float" if already else ""))
    return figure(f"ranking-{k}", bar_chart(bars, label=what, axis_label="score", marked_note="float"),
                  escape(what) + f": {len(bars)} groups.", table(["rank", "group", "layers", "score", "final"], rows,
                                                                 "ranking"))


def sensitivity(report: dict) -> str:
    aaq = summary(report, AAQ)
    rankings, note = _rankings(aaq)
    if not rankings:
        return "<p>No ranking was needed: the quantized model met the target.</p>" if aaq and not aaq.get(
            "steps") else ""
    layers, reverted = group_layers(report), reverted_groups(aaq)
    method = rankings[0].get("by") or ((record(report, AAQ) or {}).get("params") or {}).get("ranking_method")
    score = "minus the distance of its outputs to the float model's" if method == "output_distance" else "the metric"
    figures = [_ranking_figure(k, len(rankings), r, layers, reverted) for k, r in enumerate(rankings, 1)]
    rest = "ranking 2" if len(figures) == 2 else f"rankings 2–{len(figures)}"
    more = (f'<details class="more"><summary>{rest}</summary>{"".join(figures[1:])}</details>'
            if len(figures) > 1 else "")
    return ((f'<p class="note">{escape(note)}</p>' if note else "")
            + f"<p>{'' if note else f'{len(rankings)} ranking(s). '}A group's score is {score} on the ranking "
              "subset with that group in float: the higher, the more reverting it helps. Groups left in float at "
              "the end are marked.</p>"
            + figures[0] + more)


# ------------------------------------------------------------------------------------------ search


def _start_drops(report: dict, aaq: dict) -> dict[str, float]:
    """Drops of the fully quantized model, the search's start, read from the evaluation history.

    The search's first full-set evaluation is of the quantized model, after the float
    model's (whose values are the float values) when the float model was measured.
    Drawn only when that reading is sure to be right: no whole-model alternative was
    kept (the search would start from that model) and the drops found exceed the
    target (else there would have been no search). Empty otherwise.
    """
    targets = aaq.get("metrics") or {}
    if not targets or any((r or {}).get("kept") for r in (aaq.get("alternatives") or {}).values()):
        return {}
    full = [e for e in report.get("evaluations") or [] if isinstance(e, dict)
            and (e.get("full") or not e.get("complete", True))]
    if full and all(is_num(t.get("float")) and (full[0].get("values") or {}).get(n) == t["float"]
                    for n, t in targets.items()):
        float_digest = full[0].get("model_digest")
        full = [e for e in full if e.get("model_digest") != float_digest]
    done = [e for e in full if full and e.get("model_digest") == full[0].get("model_digest")
            and e.get("complete", True)]
    if not done:
        return {}
    out = {}
    for name, t in targets.items():
        value, ref = (done[0].get("values") or {}).get(name), t.get("reference", t.get("float"))
        higher = (report["metrics"].get(name) or {}).get("higher_is_better", True)
        if is_num(value) and is_num(ref):
            out[name] = ref - value if higher else value - ref
    over = any(is_num(t.get("allowed_drop")) and out.get(n, -math.inf) > t["allowed_drop"] for n, t in targets.items())
    return out if over and len(out) == len(targets) else {}


def _series(name: str, steps: list[dict], start: float | None) -> tuple[list[Point], list[tuple[float, float]]]:
    """One metric's points (start, then each step) and the step line of the drop of the model kept so far."""
    points, current = [], start
    path = [(0.0, start)] if start is not None else []
    if start is not None:
        points.append(Point(0, start, f"start, every group quantized: {name} drop {start:+.4f}", "start"))
    for k, step in enumerate(steps, 1):
        drop, kept = (step.get("drops") or {}).get(name), bool(step.get("kept"))
        classes = [] if kept else ["rolled-back"]
        if isinstance(drop, list) and len(drop) == 2 and all(is_num(v) for v in drop):
            # stopped once decided: drawn at its best case, with a bar to its worst
            y, low, high, text = drop[0], drop[0], drop[1], f"in [{drop[0]:+.4f}, {drop[1]:+.4f}]"
            classes.append("partial")
        elif is_num(drop):
            y, low, high, text = drop, None, None, f"{drop:+.4f}"
            iv = (step.get("intervals") or {}).get(name)
            if iv and is_num(iv.get("low")) and is_num(iv.get("high")):
                low, high = iv["low"], iv["high"]
                text += f", {iv['level']:.0%} interval [{low:+.4f}, {high:+.4f}]"
        else:
            continue
        title = f"step {k}: group {step.get('group')} {'kept' if kept else 'rolled back'}: {name} drop {text}"
        whisker = "interval" if "partial" in classes or low is None else "ci"
        points.append(Point(k, y, title, " ".join(classes), low, high, whisker))
        if kept and low is None:
            current = y
        if current is not None:
            path.append((float(k), current))
    return points, path


def search(report: dict) -> str:
    aaq = summary(report, AAQ)
    if not aaq:
        return ""
    steps, targets = aaq.get("steps") or [], aaq.get("metrics") or {}
    reason = escape(str(aaq.get("stop_reason", "")))
    if not steps:
        return f"<p>No group was reverted (stop reason: {reason or '—'}).</p>"
    start, layers, metrics = _start_drops(report, aaq), group_layers(report), list(targets)
    series, paths = [], []
    for s, name in enumerate(metrics):
        points, path = _series(name, steps, start.get(name))
        series.append((name, points))
        paths.append((path, s))
    limits: dict[float, list[str]] = {}
    for name, t in targets.items():
        if is_num(t.get("allowed_drop")):
            limits.setdefault(t["allowed_drop"], []).append(name)
    hlines = [(v, f"allowed: {', '.join(names)} {v:.4f}", metrics.index(names[0]) if len(names) == 1 else -1)
              for v, names in limits.items()]
    every = max(1, math.ceil(len(steps) / 20))
    ticks = ([(0.0, "start")] if start else []) + [(float(k), str(k)) for k in range(1, len(steps) + 1)
                                                  if k % every == 0 or k == 1]
    rows = [td(k) + td(str(st.get("group"))) + td(", ".join(layers.get(str(st.get("group")), [])) or "—")
            + td(st.get("score")) + flag(bool(st.get("kept")), "kept", "rolled back") + td(st.get("note", ""))
            + "".join(td((st.get("drops") or {}).get(m), signed=True) for m in metrics)
            for k, st in enumerate(steps, 1)]
    legend = "".join(f'<span class="key s{i % 8}">● {escape(n)}</span>' for i, n in enumerate(metrics))
    kept = sum(1 for st in steps if st.get("kept"))
    chart = point_chart(series, label="drop after each step", x_label="step", y_label="drop", x_ticks=ticks,
                        hlines=hlines, paths=paths)
    caption = (f"{legend} Filled: kept; hollow: rolled back. A vertical bar: that evaluation stopped once decided; "
               "the drop lies between the point and the bar's end (an arrow: beyond the chart). A capped bar: a "
               "complete evaluation's confidence interval. The line is the drop of the model kept so far; dashed: "
               "the allowed drop.")
    head = ["step", "group", "layers", "score", "outcome", "note"] + [f"{m} drop" for m in metrics]
    return (f"<p>Search <strong>{escape(str(aaq.get('search', '')))}</strong>: {len(steps)} steps, {kept} kept, "
            f"{len(steps) - kept} rolled back; it stopped because: <strong>{reason}</strong>.</p>"
            + figure("steps", chart, caption, table(head, rows, "steps")) + _alternatives(aaq))


def _alternatives(aaq: dict) -> str:
    rows = []
    for what, rec in (aaq.get("alternatives") or {}).items():
        for tried in (rec or {}).get("tried") or []:
            kept = rec.get("kept") and tried.get("params") == rec.get("kept")
            rows.append(td(what) + td(json.dumps(tried.get("params"), sort_keys=True)) + td(tried.get("subset_score"))
                        + td("kept" if kept else ""))
    return ("<h3>Whole-model alternatives tried before reverting</h3>"
            + table(["what", "params", "subset score", ""], rows)) if rows else ""


# ------------------------------------------------------------------------------------------ tuning


def _objective(trial: dict) -> tuple[str, float | None]:
    objectives = trial.get("objectives")
    if isinstance(objectives, dict):
        for name, v in objectives.items():
            if name != "accuracy" and is_num(v):
                return name, v
    if isinstance(objectives, list) and objectives and is_num(objectives[0]):
        return "objective", objectives[0]
    return "objective", objectives if is_num(objectives) else None


def _chosen(best: Any, trials: list[dict]) -> int | None:
    if is_num(best) and isinstance(best, int) and 0 <= best < len(trials):
        return best
    if isinstance(best, dict):
        numbered = {t.get("trial"): i for i, t in enumerate(trials) if isinstance(t.get("trial"), int)}
        if isinstance(best.get("trial"), int) and best["trial"] in numbered:  # Tuning numbers trials from 1
            return numbered[best["trial"]]
        if isinstance(best.get("index"), int) and 0 <= best["index"] < len(trials):
            return best["index"]
        config = best.get("config", best)
        return next((i for i, t in enumerate(trials) if t.get("config") == config), None)
    return None


def trials(report: dict) -> str:
    tuning = summary(report, "Tuning")
    found = [t for t in tuning.get("trials") or [] if isinstance(t, dict)]
    if not found:
        return ""
    measured = next((t for t in found if _objective(t)[1] is not None), found[0])  # failed trials may have none
    chosen, (objective, _) = _chosen(tuning.get("best"), found), _objective(measured)
    points, rows = [], []
    labels = [t["trial"] if isinstance(t.get("trial"), int) else i for i, t in enumerate(found)]
    for i, t in enumerate(found):
        x, acc, passed, label = _objective(t)[1], t.get("accuracy"), t.get("passed"), labels[i]
        classes = " ".join(c for c, on in (("chosen", i == chosen), ("failed", passed is False)) if on)
        if is_num(x) and is_num(acc):
            points.append(Point(x, acc, f"trial {label}: {objective} {x:.4g}, accuracy {acc:.4f}"
                                + ("; chosen" if i == chosen else "") + ("; failed" if passed is False else ""),
                                classes))
        objectives = t.get("objectives")
        rows.append(td(label) + f"<td><code>{escape(json.dumps(t.get('config'), sort_keys=True))}</code></td>"
                    + td(json.dumps(objectives, sort_keys=True) if isinstance(objectives, (dict, list)) else objectives)
                    + td(acc) + flag(passed) + td(t.get("seconds"), 2) + td("chosen" if i == chosen else ""))
    chart = point_chart([("trials", points)], label="trials: objective against accuracy", x_label=objective,
                        y_label="accuracy")
    return (f"<p>{len(found)} trials; the run ended with exit case <strong>"
            f"{escape(str(tuning.get('exit') or tuning.get('exit_case') or '—'))}</strong>; chosen: "
            f"{'trial ' + str(labels[chosen]) if chosen is not None else 'none'}.</p>"
            + figure("trials-chart", chart, "One point per trial; ringed: the chosen one; hollow: did not meet the "
                     "accuracy target.", table(["trial", "config", "objectives", "accuracy", "passed", "seconds", ""],
                                               rows, "trials")))
