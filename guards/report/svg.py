"""Inline SVG plots for the gate report, drawn in Python (no JavaScript, no network, no plotting library).

- :func:`bar_chart`: one bar per subgroup (risk per subgroup, subgroup distributions), with an optional
  threshold line;
- :func:`roc_chart`: ROC curves per subgroup on log-log axes, as LiRA (arXiv 2112.03570, Fig. 1) recommends
  for membership inference, where the low false-positive region is what matters;
- :func:`line_chart`: victim learning curves (accuracy per epoch).

Every label is escaped with :func:`html.escape`; values that are not finite numbers are left out of a plot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f")
W, H = 520, 300
LEFT, RIGHT, TOP, BOTTOM = 60, 150, 30, 75  # room below for slanted subgroup labels


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(float(x))


def _frame(title: str, body: list[str], *, xlabel: str, ylabel: str) -> str:
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{W / 2:.0f}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>',
        f'<line x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}" stroke="#333"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}" stroke="#333"/>',
        f'<text x="{(LEFT + W - RIGHT) / 2:.0f}" y="{H - 4}" text-anchor="middle" font-size="11">'
        f"{escape(xlabel)}</text>",
        f'<text x="14" y="{(TOP + H - BOTTOM) / 2:.0f}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 14 {(TOP + H - BOTTOM) / 2:.0f})">{escape(ylabel)}</text>',
        *body,
        "</svg>",
    ])


STATUS_COLOUR = {"pass": "#2ca02c", "warn": "#ff7f0e", "fail": "#d62728", "inconclusive": "#9467bd"}


def bar_chart(values: Mapping[str, float], *, title: str, ylabel: str = "value",
              threshold: float | None = None, statuses: Mapping[str, str] | None = None) -> str:
    """Bars of ``values`` (label -> number), a dashed line at ``threshold`` when given.

    A bar's colour is its finding's own status (``statuses``: label -> pass / warn / fail / inconclusive), never
    "above the threshold": for a share floor above is the safe side, for a risk it is the unsafe one. Without a
    status the bar is neutral. Labels are slanted so that many subgroups do not overlap."""
    items = [(k, float(v)) for k, v in values.items() if _finite(v)]
    top = max([v for _, v in items] + ([threshold] if threshold is not None and _finite(threshold) else []) + [0.0])
    top = top * 1.1 if top > 0 else 1.0
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    body: list[str] = []
    n = max(len(items), 1)
    bw = pw / n
    for i, (label, v) in enumerate(items):
        h = max(v, 0.0) / top * ph
        x = LEFT + i * bw + bw * 0.1
        colour = STATUS_COLOUR.get((statuses or {}).get(label, ""), PALETTE[0])
        body.append(f'<rect x="{x:.1f}" y="{TOP + ph - h:.1f}" width="{bw * 0.8:.1f}" height="{h:.1f}" '
                    f'fill="{colour}"><title>{escape(label)}: {v:.4g}</title></rect>')
        body.append(f'<text x="{x + bw * 0.4:.1f}" y="{TOP + ph - h - 3:.1f}" text-anchor="middle" '
                    f'font-size="10">{v:.3g}</text>')
        lx, ly = x + bw * 0.4, H - BOTTOM + 10
        body.append(f'<text x="{lx:.1f}" y="{ly}" text-anchor="end" font-size="9" '
                    f'transform="rotate(-35 {lx:.1f} {ly})">{escape(label[:20])}</text>')
    if threshold is not None and _finite(threshold):
        y = TOP + ph - threshold / top * ph
        body.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="#555" '
                    f'stroke-dasharray="5,3"/>')
        body.append(f'<text x="{W - RIGHT + 4}" y="{y + 4:.1f}" font-size="10">threshold {threshold:.3g}</text>')
    body.append(f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end" font-size="9">{top:.3g}</text>')
    body.append(f'<text x="{LEFT - 4}" y="{TOP + ph}" text-anchor="end" font-size="9">0</text>')
    return _frame(title, body, xlabel="subgroup", ylabel=ylabel)


def _legend(names: Sequence[str]) -> list[str]:
    out = []
    for i, name in enumerate(names):
        y = TOP + 12 + i * 14
        c = PALETTE[i % len(PALETTE)]
        out.append(f'<line x1="{W - RIGHT + 8}" y1="{y - 4}" x2="{W - RIGHT + 24}" y2="{y - 4}" stroke="{c}" '
                   f'stroke-width="2"/>')
        out.append(f'<text x="{W - RIGHT + 28}" y="{y}" font-size="10">{escape(name[:22])}</text>')
    return out


def roc_chart(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str,
              floor: float = 1e-4) -> str:
    """ROC curves (name -> (fpr, tpr)) on log-log axes from ``floor`` to 1, with the chance diagonal."""
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    lo = math.log10(floor)

    def px(v: float) -> float:
        return LEFT + (math.log10(max(v, floor)) - lo) / -lo * pw

    def py(v: float) -> float:
        return TOP + ph - (math.log10(max(v, floor)) - lo) / -lo * ph

    body = [f'<line x1="{px(floor):.1f}" y1="{py(floor):.1f}" x2="{px(1):.1f}" y2="{py(1):.1f}" stroke="#999" '
            'stroke-dasharray="3,3"/>']
    for d in range(int(lo), 1):
        v = 10.0**d
        body.append(f'<text x="{px(v):.1f}" y="{H - BOTTOM + 14}" text-anchor="middle" font-size="9">{v:g}</text>')
        body.append(f'<text x="{LEFT - 4}" y="{py(v) + 3:.1f}" text-anchor="end" font-size="9">{v:g}</text>')
    names = []
    for i, (name, (fpr, tpr)) in enumerate(curves.items()):
        pts = [(float(f), float(t)) for f, t in zip(fpr, tpr, strict=False) if _finite(f) and _finite(t)]
        if not pts:
            continue
        names.append(name)
        path = " ".join(f"{px(f):.1f},{py(t):.1f}" for f, t in pts)
        body.append(f'<polyline points="{path}" fill="none" stroke="{PALETTE[i % len(PALETTE)]}" '
                    f'stroke-width="1.5"><title>{escape(name)}</title></polyline>')
    body.extend(_legend(names))
    return _frame(title, body, xlabel="false positive rate (log)", ylabel="true positive rate (log)")


def line_chart(series: Mapping[str, Sequence[float]], *, title: str, xlabel: str = "epoch",
               ylabel: str = "accuracy") -> str:
    """One line per series (name -> value per step), y from 0 to the largest value (at least 1)."""
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    clean = {k: [float(v) for v in vs if _finite(v)] for k, vs in series.items()}
    clean = {k: v for k, v in clean.items() if v}
    steps = max([len(v) for v in clean.values()] + [2])
    top = max([max(v) for v in clean.values()] + [1.0])
    body = [f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end" font-size="9">{top:.3g}</text>',
            f'<text x="{LEFT - 4}" y="{TOP + ph}" text-anchor="end" font-size="9">0</text>',
            f'<text x="{W - RIGHT}" y="{H - BOTTOM + 14}" text-anchor="end" font-size="9">{steps}</text>']
    for i, (name, vs) in enumerate(clean.items()):
        pts = " ".join(f"{LEFT + (j + 1) / steps * pw:.1f},{TOP + ph - v / top * ph:.1f}" for j, v in enumerate(vs))
        body.append(f'<polyline points="{pts}" fill="none" stroke="{PALETTE[i % len(PALETTE)]}" stroke-width="1.5">'
                    f"<title>{escape(name)}</title></polyline>")
    body.extend(_legend(list(clean)))
    return _frame(title, body, xlabel=xlabel, ylabel=ylabel)


def thumbnails(rows: Mapping[str, Sequence[Sequence[Sequence[float]]]], *, title: str,
               captions: Mapping[str, Sequence[str]] | None = None, pixel: int = 3) -> str:
    """Rows of small grey-scale images (row label -> images, each a list of pixel rows with values in [0, 1]),
    one ``pixel`` x ``pixel`` square per value; a value that is not a finite number is drawn black. ``captions``
    (row label -> one text per image) become each image's tooltip. For the inversion check's reconstructions beside
    the nearest released training image."""
    label_w, gap, top = 190, 6, 26
    sizes = [len(img) for imgs in rows.values() for img in imgs] or [1]
    side = max(sizes) * pixel
    n = max([len(imgs) for imgs in rows.values()] + [1])
    width, height = label_w + n * (side + gap), top + len(rows) * (side + gap)
    body = [f'<text x="4" y="16" font-size="13">{escape(title)}</text>']
    for r, (name, imgs) in enumerate(rows.items()):
        y0 = top + r * (side + gap)
        body.append(f'<text x="4" y="{y0 + side / 2 + 4:.0f}" font-size="10">{escape(name[:34])}</text>')
        for i, img in enumerate(imgs):
            x0 = label_w + i * (side + gap)
            caption = (captions or {}).get(name, [])
            tip = f"<title>{escape(caption[i])}</title>" if i < len(caption) else ""
            body.append(f'<g transform="translate({x0} {y0})">{tip}')
            for yy, line in enumerate(img):
                for xx, v in enumerate(line):
                    grey = int(round(255 * min(max(float(v), 0.0), 1.0))) if _finite(v) else 0
                    body.append(f'<rect x="{xx * pixel}" y="{yy * pixel}" width="{pixel}" height="{pixel}" '
                                f'fill="#{grey:02x}{grey:02x}{grey:02x}"/>')
            body.append("</g>")
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}">', f"<title>{escape(title)}</title>", *body, "</svg>"])
