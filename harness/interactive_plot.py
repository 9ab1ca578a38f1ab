"""Interactive Pareto plots for the report site: inline SVG, no library, no server, nothing fetched.

:func:`pareto_svg` draws one scatter of stored configurations (quality against measured bytes per
vector, or against single-thread QPS, on a log x axis) with each method's Pareto front as a line.
Every point is an SVG link to its configuration's row on the method page (``#cfg-<hash>``) and
carries its figures in ``data-*`` attributes; the small script ``report_assets/plot.js`` (inlined
by :mod:`harness.report`) turns them into a tooltip on hover and makes the legend toggle methods.
Without JavaScript the plot still renders and the points still link.

The static PNG/SVG figures for the README stay with :mod:`harness.plots`; this module only uses
its :func:`~harness.plots.pareto_front`, so both draw the same fronts.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from harness.plots import pareto_front

#: matplotlib's tab20, the palette of harness.plots
PALETTE = ("#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896",
           "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7",
           "#bcbd22", "#dbdb8d", "#17becf", "#9edae5")
SHAPES = ("circle", "square", "diamond", "up", "down")
WIDTH, HEIGHT = 720, 430
LEFT, RIGHT, TOP, BOTTOM = 62, 14, 14, 52  # margins of the plot area


@dataclass(frozen=True)
class Axis:
    """Maps data to pixels; ``log`` axes take the log of the value in ``base``."""

    lo: float
    hi: float
    p0: float
    p1: float
    log: bool = False

    def __call__(self, v: float) -> float:
        t = math.log(v) if self.log else v
        lo, hi = (math.log(self.lo), math.log(self.hi)) if self.log else (self.lo, self.hi)
        return self.p0 + (t - lo) / (hi - lo) * (self.p1 - self.p0) if hi > lo else (self.p0 + self.p1) / 2


def style(methods: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Colour and marker shape per method (sorted order, so a method keeps its look across plots)."""
    return {m: (PALETTE[i % len(PALETTE)], SHAPES[(i + i // len(PALETTE)) % len(SHAPES)])
            for i, m in enumerate(sorted(set(methods)))}


def _shape(kind: str, x: float, y: float, r: float) -> str:
    """SVG path data of a marker centred on (x, y)."""
    if kind == "square":
        s = r * 0.9
        return f"M{x - s:.1f} {y - s:.1f}h{2 * s:.1f}v{2 * s:.1f}h{-2 * s:.1f}z"
    if kind == "diamond":
        s = r * 1.25
        return f"M{x:.1f} {y - s:.1f}L{x + s:.1f} {y:.1f}L{x:.1f} {y + s:.1f}L{x - s:.1f} {y:.1f}z"
    if kind in ("up", "down"):
        s = r * 1.2 * (1 if kind == "up" else -1)
        return f"M{x:.1f} {y - s:.1f}L{x + abs(s):.1f} {y + s * 0.8:.1f}L{x - abs(s):.1f} {y + s * 0.8:.1f}z"
    return f"M{x - r:.1f} {y:.1f}a{r:.1f} {r:.1f} 0 1 0 {2 * r:.1f} 0a{r:.1f} {r:.1f} 0 1 0 {-2 * r:.1f} 0z"


def log_ticks(lo: float, hi: float, base: int) -> list[float]:
    """Tick values of a log axis: powers of 2 (base 2) or 1·2·5 × 10^k (base 10) within [lo, hi]."""
    if base == 2:
        ticks = [2.0 ** k for k in range(math.floor(math.log2(lo)), math.ceil(math.log2(hi)) + 1)]
    else:
        ticks = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                 for m in (1, 2, 5)]
    inside = [t for t in ticks if lo <= t <= hi]
    if base == 10 and len(inside) > 8:
        inside = [t for t in inside if round(t / 10 ** math.floor(math.log10(t))) == 1]
    return inside


def linear_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    span = hi - lo if hi > lo else 1.0
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [round(start + i * step, 10) for i in range(int((hi - start) / step + 1e-9) + 1)]


def _tick_label(v: float, base: int) -> str:
    if base == 2:
        return f"{v:g}" if v < 1 else str(int(v))  # bytes: 1024, 2048 read better than 1.024k
    if v >= 1000:
        return f"{v / 1000:g}k" if v < 1e6 else f"{v / 1e6:g}M"
    return f"{v:g}"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def pareto_svg(runs: pd.DataFrame, *, x: str, y: str, xlabel: str, ylabel: str, smaller_x_better: bool,
               entry: Callable[[pd.Series], str], href: Callable[[pd.Series], str],
               params: Callable[[object], str], plot_id: str, log_base: int = 10) -> str:
    """One interactive scatter plot with Pareto fronts, as an HTML fragment (``<figure>`` content).

    ``runs`` are result rows (one per configuration); ``x``/``y`` their columns; ``entry`` names
    the row's series (a method, or ``method[variant]``); ``href`` the link of its point;
    ``params`` formats a parameter cell for the tooltip.
    """
    data = runs[(runs[x] > 0) & runs[y].notna()].copy()
    if data.empty:
        return "<p>No configuration to plot.</p>"
    data["_entry"] = [entry(r) for _, r in data.iterrows()]
    looks = style(data["_entry"].tolist())
    xs, ys = data[x].to_numpy(float), data[y].to_numpy(float)
    xlo, xhi = float(xs.min()) / 1.25, float(xs.max()) * 1.25
    ypad = max((ys.max() - ys.min()) * 0.05, 0.01)
    ylo, yhi = max(0.0, float(ys.min()) - ypad), float(ys.max()) + ypad
    if ys.max() <= 1:  # a quality in [0, 1] never gets an axis past 1
        yhi = min(1.0, yhi)
    ax = Axis(xlo, xhi, LEFT, WIDTH - RIGHT, log=True)
    ay = Axis(ylo, yhi, HEIGHT - BOTTOM, TOP)
    out = [f'<svg class="pareto" id="{_e(plot_id)}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
           f'aria-label="{_e(ylabel)} against {_e(xlabel)}" data-xlabel="{_e(xlabel)}" data-ylabel="{_e(ylabel)}">']
    # grid and axes
    out.append('<g class="axis">')
    for t in log_ticks(xlo, xhi, log_base):
        px = ax(t)
        out.append(f'<line class="grid" x1="{px:.1f}" x2="{px:.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}"/>'
                   f'<text x="{px:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{_tick_label(t, log_base)}</text>')
    for t in linear_ticks(ylo, yhi):
        py = ay(t)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py:.1f}" y2="{py:.1f}"/>'
                   f'<text x="{LEFT - 6}" y="{py + 4:.1f}" text-anchor="end">{t:g}</text>')
    out.append(f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{HEIGHT - TOP - BOTTOM}"/>')
    out.append(f'<text class="label" x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 12}" text-anchor="middle">'
               f'{_e(xlabel)} (log scale)</text>')
    out.append(f'<text class="label" transform="translate(16 {(TOP + HEIGHT - BOTTOM) / 2}) rotate(-90)" '
               f'text-anchor="middle">{_e(ylabel)}</text></g>')
    for name, g in data.groupby("_entry", sort=True):
        colour, shape = looks[name]
        gx, gy = g[x].to_numpy(float), g[y].to_numpy(float)
        order = pareto_front(gx, gy, smaller_x_better=smaller_x_better)
        front = set(order.tolist())
        out.append(f'<g class="series" data-method="{_e(name)}" fill="{colour}" stroke="{colour}">')
        if len(order) > 1:
            pts = " ".join(f"{ax(gx[i]):.1f},{ay(gy[i]):.1f}" for i in order)
            out.append(f'<polyline class="front" points="{pts}"/>')
        for i, (_, r) in enumerate(g.iterrows()):
            on_front = i in front
            tip = {"method": name, "build": params(r.get("build_params")), "search": params(r.get("search_params")),
                   "quality": f"{r[y]:.4f}", "bytes": f"{r['bytes_per_vector']:.1f}",
                   "qps": f"{r['qps_1t']:,.0f}", "hash": str(r["config_hash"])}
            label = (f"{name}: {tip['build']}; {ylabel} {tip['quality']}, {tip['bytes']} B/vector, "
                     f"{tip['qps']} QPS")
            out.append(f'<a href="{_e(href(r))}" aria-label="{_e(label)}">'
                       f'<path class="pt{" front-pt" if on_front else ""}" '
                       f'd="{_shape(shape, ax(gx[i]), ay(gy[i]), 4.5 if on_front else 3.2)}" '
                       f"data-tip='{_e(json.dumps(tip, ensure_ascii=False))}'/></a>")
        out.append("</g>")
    out.append("</svg>")
    legend = "".join(
        f'<button type="button" class="legend-item" data-method="{_e(m)}" aria-pressed="true" '
        f'title="show or hide {_e(m)}"><svg viewBox="0 0 12 12" aria-hidden="true"><path d="{_shape(looks[m][1], 6, 6, 4)}" '
        f'fill="{looks[m][0]}"/></svg>{_e(m)}</button>'
        for m in sorted(looks))
    return ('<div class="plot-wrap">' + "".join(out) + '<div class="plot-tip" hidden></div></div>'
            f'<div class="legend" role="group" aria-label="methods">{legend}'
            '<button type="button" class="legend-all" data-show="1">all</button>'
            '<button type="button" class="legend-all" data-show="0">none</button></div>')

