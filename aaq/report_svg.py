"""Hand-written SVG charts for report.html, and the table cells beside them: no dependency, countable.

Every mark a reader (or a test) may count has a class: ``rect.bar`` (one per bar,
``reverted`` when that group went back to float), ``circle.point`` (one per measured
point; ``rolled-back``, ``partial``, ``chosen``, ``failed`` as they apply), ``rect.segment``
(one per part of a stacked bar). Colours come from the page's CSS (classes only), so
the charts follow the page into print. Each mark carries a ``<title>``: the exact
numbers on hover. The numbers are also in a table beside every chart; a chart is the
picture, never the only record.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Any, Sequence

WIDTH = 880
SERIES = 8  # CSS defines .s0 ... .s7 (Okabe-Ito colours, distinguishable with colour-blindness)


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    title: str
    marked: bool = False
    limit: float | None = None
    """Drawn as a tick across the bar (``line.limit``): e.g. the drop allowed for that metric."""
    low: float | None = None
    """With ``high``: the value's confidence interval, drawn as a capped error bar (``.ci``)."""
    high: float | None = None


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    title: str
    classes: str = ""
    low: float | None = None
    """With ``high``: the point is only known to lie in [low, high] (drawn as an error bar)."""
    high: float | None = None
    whisker: str = "interval"
    """The class of the [low, high] bar: ``interval`` (a stopped evaluation's bounds) or ``ci`` (capped)."""


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step + 1e-9) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 12))
    return ticks


def _tick(v: float) -> str:
    return f"{v:.6g}"


def _padded(values: Sequence[float]) -> tuple[float, float]:
    """The data's range plus 4% each side, so no point sits on the frame; not below 0 for data that is not."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.04
    return (lo - pad if lo - pad >= 0 or lo < 0 else 0.0), hi + pad


class _Scale:
    def __init__(self, lo: float, hi: float, start: float, end: float) -> None:
        self.lo, self.hi, self.start, self.end = lo, hi, start, end

    def __call__(self, v: float) -> float:
        span = self.hi - self.lo or 1.0
        return self.start + (v - self.lo) / span * (self.end - self.start)


def _svg(height: float, label: str, body: list[str], width: float = WIDTH) -> str:
    return (f'<svg class="chart" viewBox="0 0 {width:.0f} {height:.0f}" '
            f'width="{width:.0f}" height="{height:.0f}" role="img" aria-label="{escape(label)}">'
            f'<title>{escape(label)}</title>' + "".join(body) + "</svg>")


def _x_axis(scale: _Scale, ticks: list[float], top: float, bottom: float, label: str = "") -> list[str]:
    out = []
    for t in ticks:
        x = scale(t)
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}"/>'
                   f'<text class="tick" x="{x:.1f}" y="{bottom + 14:.1f}" text-anchor="middle">{_tick(t)}</text>')
    if label:
        mid = (scale.start + scale.end) / 2
        out.append(f'<text class="axis-label" x="{mid:.1f}" y="{bottom + 30:.1f}" text-anchor="middle">'
                   f'{escape(label)}</text>')
    return out


def _y_axis(scale: _Scale, ticks: list[float], left: float, right: float, label: str = "") -> list[str]:
    out = []
    for t in ticks:
        y = scale(t)
        out.append(f'<line class="grid" x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{left - 6:.1f}" y="{y + 4:.1f}" text-anchor="end">{_tick(t)}</text>')
    if label:
        mid = (scale.start + scale.end) / 2
        out.append(f'<text class="axis-label" transform="translate(14 {mid:.1f}) rotate(-90)" '
                   f'text-anchor="middle">{escape(label)}</text>')
    return out


def _capped(a: float, b: float, at: float, *, horizontal: bool, series: int | None = None) -> str:
    """An error bar from ``a`` to ``b`` (pixels) at ``at`` across, with caps at both ends."""
    cls = "ci plain" if series is None else f"ci s{series % SERIES}"
    if horizontal:
        d = f"M{a:.1f},{at:.1f} H{b:.1f} M{a:.1f},{at - 4:.1f} V{at + 4:.1f} M{b:.1f},{at - 4:.1f} V{at + 4:.1f}"
    else:
        d = f"M{at:.1f},{a:.1f} V{b:.1f} M{at - 4:.1f},{a:.1f} H{at + 4:.1f} M{at - 4:.1f},{b:.1f} H{at + 4:.1f}"
    return f'<path class="{cls}" d="{d}"/>'


def bar_chart(bars: Sequence[Bar], *, label: str, axis_label: str = "", marked_note: str = "",
              marked_class: str = "reverted") -> str:
    """Horizontal bars, one row each, from zero (negative values go left of the zero line).

    A marked bar gets ``marked_class`` (and ``marked_note`` after its value), so the mark
    does not rest on colour alone.
    """
    left, right, row, top = 190, WIDTH - 70, 18, 10
    bottom = top + row * len(bars)
    values = [v for b in bars for v in (b.value, b.limit, b.low, b.high)
              if v is not None and math.isfinite(v)] or [0.0]
    ticks = nice_ticks(min(0.0, min(values)), max(0.0, max(values)))
    x = _Scale(ticks[0], ticks[-1], left, right)
    body = _x_axis(x, ticks, top, bottom, axis_label)
    zero = x(0.0)
    for i, b in enumerate(bars):
        y = top + i * row
        v = b.value if math.isfinite(b.value) else 0.0
        x0, x1 = sorted((zero, x(v)))
        whisker = b.low is not None and b.high is not None and math.isfinite(b.low) and math.isfinite(b.high)
        text_x = max(x1, x(b.high)) if whisker else x1  # type: ignore[arg-type]
        cls = f"bar {marked_class}" if b.marked else "bar"
        body.append(f'<text class="row-label" x="{left - 6}" y="{y + 13}" text-anchor="end">{escape(b.label)}</text>'
                    f'<rect class="{cls}" x="{x0:.1f}" y="{y + 2}" width="{max(x1 - x0, 1):.1f}" height="{row - 4}">'
                    f'<title>{escape(b.title)}</title></rect>'
                    f'<text class="value" x="{text_x + 4:.1f}" y="{y + 13}">{b.value:.4g}'
                    f'{" " + escape(marked_note) if b.marked and marked_note else ""}</text>')
        if whisker:
            body.append(_capped(x(b.low), x(b.high), y + row / 2, horizontal=True))
        if b.limit is not None and math.isfinite(b.limit):
            lx = x(b.limit)
            body.append(f'<line class="limit" x1="{lx:.1f}" y1="{y}" x2="{lx:.1f}" y2="{y + row}">'
                        f'<title>limit {_tick(b.limit)}</title></line>')
    body.append(f'<line class="axis" x1="{zero:.1f}" y1="{top}" x2="{zero:.1f}" y2="{bottom}"/>')
    return _svg(bottom + (40 if axis_label else 24), label, body)


def point_chart(series: Sequence[tuple[str, Sequence[Point]]], *, label: str, x_label: str, y_label: str,
                x_ticks: Sequence[tuple[float, str]] | None = None, hlines: Sequence[tuple[float, str, int]] = (),
                paths: Sequence[tuple[Sequence[tuple[float, float]], int]] = (), height: int = 300) -> str:
    """Points per series (``s0``... colours), optional step paths and labelled horizontal lines.

    ``x_ticks``: fixed (value, text) ticks, e.g. step numbers; else round numbers.
    ``hlines``: (y, text, series) dashed lines, e.g. the allowed drop of each metric (series -1: no colour).
    ``paths``: (points, series) drawn as a step line (horizontal, then vertical).
    """
    left, right, top, bottom = 64, WIDTH - 20, 12, height - 44
    pts = [p for _, ps in series for p in ps]
    xs = [p.x for p in pts] + [t for t, _ in (x_ticks or [])]
    # Interval ends do not stretch the axis (a stopped evaluation can leave [0.02, 0.43]); they are clipped.
    ys = [v for p in pts for v in (p.y, p.low) if v is not None and math.isfinite(v)]
    ys += [y for y, _, _ in hlines] + [y for path, _ in paths for _, y in path]
    xs, ys = xs or [0.0, 1.0], ys or [0.0, 1.0]
    if x_ticks is None:
        xt = nice_ticks(*_padded(xs))
        x = _Scale(xt[0], xt[-1], left + 8, right - 8)
    else:
        pad = (max(xs) - min(xs)) * 0.04 or 0.5
        x = _Scale(min(xs) - pad, max(xs) + pad, left, right)
    yt = nice_ticks(*_padded(ys))
    y = _Scale(yt[0], yt[-1], bottom, top)
    body = _y_axis(y, yt, left, right, y_label)
    if x_ticks is not None:
        for v, text in x_ticks:
            body.append(f'<text class="tick" x="{x(v):.1f}" y="{bottom + 14}" text-anchor="middle">'
                        f'{escape(text)}</text>')
        body.append(f'<text class="axis-label" x="{(left + right) / 2:.1f}" y="{bottom + 32}" '
                    f'text-anchor="middle">{escape(x_label)}</text>')
    else:
        body += _x_axis(x, xt, top, bottom, x_label)
    for value, text, s in hlines:
        yy, colour = y(value), f" s{s % SERIES}" if s >= 0 else ""
        body.append(f'<line class="limit{colour}" x1="{left}" y1="{yy:.1f}" x2="{right}" y2="{yy:.1f}"/>'
                    f'<text class="limit-label{colour}" x="{right - 4}" y="{yy - 4:.1f}" '
                    f'text-anchor="end">{escape(text)}</text>')
    def dodge(s: int) -> float:  # series side by side at one x, so one's interval does not hide another's
        return (s - (len(series) - 1) / 2) * 6.0 if len(series) > 1 else 0.0

    for path, s in paths:
        if path:
            d = f"M{x(path[0][0]) + dodge(s):.1f},{y(path[0][1]):.1f}" + "".join(
                f" H{x(px) + dodge(s):.1f} V{y(py):.1f}" for px, py in path[1:])
            body.append(f'<path class="step s{s % SERIES}" d="{d}"/>')
    for s, (_, ps) in enumerate(series):
        for p in ps:
            cx, cy = x(p.x) + dodge(s), y(p.y)
            if p.low is not None and p.high is not None:
                y0, y1 = (y(min(max(v, yt[0]), yt[-1])) for v in (p.low, p.high))
                if p.whisker == "ci":
                    body.append(_capped(y0, y1, cx, horizontal=False, series=s))
                else:
                    body.append(f'<line class="interval s{s % SERIES}" x1="{cx:.1f}" y1="{y0:.1f}" '
                                f'x2="{cx:.1f}" y2="{y1:.1f}"/>')
                if p.high > yt[-1]:
                    body.append(f'<path class="clipped s{s % SERIES}" d="M{cx - 5:.1f},{y1 + 7:.1f} '
                                f'L{cx:.1f},{y1:.1f} L{cx + 5:.1f},{y1 + 7:.1f}"/>')
            body.append(f'<circle class="point s{s % SERIES}{" " + p.classes if p.classes else ""}" '
                        f'cx="{cx:.1f}" cy="{cy:.1f}" r="5"><title>{escape(p.title)}</title></circle>')
    body.append(f'<line class="axis" x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}"/>')
    return _svg(height, label, body)


def stacked_bar(parts: Sequence[tuple[str, float]], *, label: str, unit: str = "s",
                colours: Sequence[int] | None = None) -> str:
    """One horizontal bar split into parts (``rect.segment s<i>``), with a legend below it.

    ``colours``: the series of each part (default: in order), so a category keeps its colour.
    """
    colours = list(colours) if colours is not None else list(range(len(parts)))
    total = sum(max(v, 0.0) for _, v in parts) or 1.0
    left, right, top = 10, WIDTH - 10, 8
    body, at = [], float(left)
    for i, (name, v) in enumerate(parts):
        w = max(v, 0.0) / total * (right - left)
        body.append(f'<rect class="segment s{colours[i] % SERIES}" x="{at:.1f}" y="{top}" width="{w:.1f}" height="26">'
                    f'<title>{escape(name)}: {v:.3g} {unit} ({100 * max(v, 0.0) / total:.0f}%)</title></rect>')
        at += w
    column = (right - left) / 2
    for i, (name, v) in enumerate(parts):
        lx, ly = left + (i % 2) * column, top + 48 + (i // 2) * 18
        body.append(f'<rect class="swatch s{colours[i] % SERIES}" x="{lx:.1f}" y="{ly - 10}" width="12" height="12"/>'
                    f'<text class="legend" x="{lx + 17:.1f}" y="{ly}">{escape(name)}: {v:.3g} {unit}</text>')
    return _svg(top + 48 + 18 * ((len(parts) + 1) // 2), label, body)


def band_chart(value: float, low: float | None, high: float | None, *, label: str, reference: float = 1.0,
               reference_label: str = "float", axis_label: str = "") -> str:
    """One value on an axis with its noise band (``rect.band``) and a reference line (x1.0: as fast as float)."""
    left, right, top = 20, WIDTH - 20, 14
    vals = [v for v in (value, low, high, reference) if v is not None and math.isfinite(v)]
    ticks = nice_ticks(min(vals) - 0.05, max(vals) + 0.05, 6)
    x = _Scale(ticks[0], ticks[-1], left, right)
    body = _x_axis(x, ticks, top, top + 30, axis_label)
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        body.append(f'<rect class="band" x="{x(low):.1f}" y="{top + 4}" width="{max(x(high) - x(low), 1):.1f}" '
                    f'height="22"><title>per-round ratios, quartiles: x{low:.3f} to x{high:.3f}</title></rect>')
    rx = x(reference)
    body.append(f'<line class="reference" x1="{rx:.1f}" y1="{top}" x2="{rx:.1f}" y2="{top + 30}"/>'
                f'<text class="tick" x="{rx + 4:.1f}" y="{top + 10}">{escape(reference_label)}</text>'
                f'<circle class="point s0" cx="{x(value):.1f}" cy="{top + 15}" r="6"><title>x{value:.3f}</title>'
                f'</circle>')
    return _svg(top + (68 if axis_label else 52), label, body)


# ------------------------------------------------------------------------------- the tables beside the charts


def num(v: Any, digits: int = 4, signed: bool = False) -> str:
    """A number as a table shows it: fixed decimals for floats (``td`` keeps the exact value in data-value)."""
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return "—" if v is None else escape(str(v))
    if isinstance(v, int):
        return f"{v:+d}" if signed else str(v)
    if not math.isfinite(v):
        return str(v)
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def td(v: Any, digits: int = 4, signed: bool = False) -> str:
    """One cell; a number (or a [low, high] pair) carries its exact value in ``data-value``."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f'<td class="num" data-value="{v!r}">{num(v, digits, signed)}</td>'
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return (f'<td class="num" data-value="{v[0]!r},{v[1]!r}">'
                f'[{num(v[0], digits, signed)}, {num(v[1], digits, signed)}]</td>')
    return f"<td>{escape(str(v)) if v is not None else '—'}</td>"


def flag(v: Any, yes: str = "yes", no: str = "NO") -> str:
    """A yes/no cell, coloured (and worded, so colour is not the only sign)."""
    return "<td>—</td>" if v is None else f'<td class="{"ok" if v else "bad"}">{yes if v else no}</td>'


def table(head: Sequence[str], rows: Sequence[str], cls: str = "") -> str:
    return (f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{escape(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(f"<tr>{r}</tr>" for r in rows) + "</tbody></table>")


FOLD_ROWS = 12
"""A chart's table longer than this starts folded on screen (the chart shows it; printing unfolds it)."""


def figure(fid: str, svg: str, caption: str, numbers: str) -> str:
    """A chart, its caption (HTML) and its numbers (a table; open unless long, always printed)."""
    rows = numbers.count("<tr>") - numbers.count("<thead><tr>")
    return (f'<figure id="{fid}">{svg}<figcaption>{caption}</figcaption>'
            f'<details class="numbers"{"" if rows > FOLD_ROWS else " open"}><summary>numbers ({rows} rows)'
            f'</summary>{numbers}</details></figure>')
