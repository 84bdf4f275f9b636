#!/usr/bin/env python3
"""The realism frontier as a figure: held-out PSNR-Y and GMSD against the HF ratio.

Guidance w moves a set of weights along a curve (more detail, less fidelity); a run is better
only where it lands above that curve in PSNR and below it in GMSD at the same HF ratio
(scripts/frontier.py). This script draws what scripts/frontier.py and scripts/candidate.sh
wrote, so the figure is rebuilt from the committed tables and nothing is re-measured:

- `--curve LABEL=FILE`: the `reference` rows of a frontier table, a line through them by HF ratio
  (the reference's weights at each w);
- `--runs FILE`: every other row of a frontier table, one colour per run (its label up to the
  last `-STEP`), the run's last step marked (`FILE#N` reads the file's N-th table only, `--only
  REGEX` only the rows whose label matches); a row labelled `RUN-STEP-aALPHA` (that step blended
  toward the reference by `flowmapsr interpolate --alpha ALPHA`) joins a line through that
  step's blends, the dial below the run's w 1;
- `--points FILE`: the faithful preset and the GAN peer, from a candidate table's held-out column.

Usage: scripts/frontier_plot.py --out PNG [--curve LABEL=FILE ...] [--runs FILE ...] [--points FILE]
       [--only REGEX]
"""
import argparse
import re

from PIL import Image, ImageDraw, ImageFont

COLOURS = [
    (31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (23, 190, 207), (188, 189, 34), (127, 127, 127), (200, 0, 120),
]
CURVE_COLOURS = [(150, 150, 150), (0, 0, 0), (0, 110, 110)]


def rows(path):
    """The table rows of a markdown file, as lists of stripped cells; `FILE#N`: its N-th table only."""
    path, _, nth = path.partition("#")
    out, table, inside = [], 0, False
    for line in open(path):
        if line.startswith("|") and not inside:
            table += 1
        inside = line.startswith("|")
        if inside and not line.startswith("|---") and (not nth or table == int(nth)):
            out.append([c.strip() for c in line.strip().strip("|").split("|")])
    return out


def frontier_rows(path):
    """(label, w, psnr, gmsd, hf) of each measured row of a scripts/frontier.py table."""
    out = []
    for r in rows(path):
        try:
            out.append((r[0], r[1], float(r[2]), float(r[3]), float(r[4])))
        except (ValueError, IndexError):
            pass  # the header row
    return out


def candidate_points(path):
    """The faithful preset and the peer from a scripts/candidate.sh table (held-out column)."""
    out = []
    for r in rows(path):
        name = "faithful preset" if "faithful" in r[0] else "GAN peer" if "peer" in r[0] else None
        if name and len(r) > 1:
            p, g, h = (float(v) for v in r[1].split("/")[:3])
            out.append((name, p, g, h))
    return out


def mark(draw, x, y, colour, shape, r):
    """A marker centred on pixel (x, y): o a disc, s a square, d a diamond (r + 2 to its tips)."""
    if shape == "o":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    elif shape == "s":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=colour)
    else:
        draw.polygon([(x, y - r - 2), (x + r + 2, y), (x, y + r + 2), (x - r - 2, y)], fill=colour)


class Panel:
    """One plot: data ranges mapped onto a pixel box, with ticks and labels."""

    def __init__(self, draw, box, xr, yr, xlabel, ylabel, font, yfmt):
        self.d, self.box, self.xr, self.yr, self.font = draw, box, xr, yr, font
        x0, y0, x1, y1 = box
        for i in range(6):
            xv = xr[0] + (xr[1] - xr[0]) * i / 5
            yv = yr[0] + (yr[1] - yr[0]) * i / 5
            x, _ = self.xy(xv, yr[0])
            _, y = self.xy(xr[0], yv)
            draw.line([(x, y1), (x, y1 + 5)], fill=(0, 0, 0))
            draw.line([(x, y0), (x, y1)], fill=(235, 235, 235))
            draw.text((x, y1 + 8), f"{xv:.2f}", fill=(0, 0, 0), font=font, anchor="mt")
            draw.line([(x0 - 5, y), (x0, y)], fill=(0, 0, 0))
            draw.line([(x0, y), (x1, y)], fill=(235, 235, 235))
            draw.text((x0 - 8, y), yfmt.format(yv), fill=(0, 0, 0), font=font, anchor="rm")
        draw.rectangle(box, outline=(0, 0, 0))  # over the grid's end lines
        draw.text(((x0 + x1) / 2, y1 + 30), xlabel, fill=(0, 0, 0), font=font, anchor="mt")
        draw.text((x0, y0 - 10), ylabel, fill=(0, 0, 0), font=font, anchor="ls")

    def xy(self, xv, yv):
        x0, y0, x1, y1 = self.box
        fx = (xv - self.xr[0]) / (self.xr[1] - self.xr[0])
        fy = (yv - self.yr[0]) / (self.yr[1] - self.yr[0])
        return x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)

    def inside(self, xv, yv):
        return self.xr[0] <= xv <= self.xr[1] and self.yr[0] <= yv <= self.yr[1]

    def line(self, pts, colour):
        self.d.line([self.xy(*p) for p in pts], fill=colour, width=2)

    def marker(self, xv, yv, colour, shape="o", r=4):
        if self.inside(xv, yv):
            mark(self.d, *self.xy(xv, yv), colour, shape, r)

    def note(self, xv, yv, text, colour):
        if self.inside(xv, yv):
            x, y = self.xy(xv, yv)
            self.d.text((x + 6, y - 6), text, fill=colour, font=self.font, anchor="ls")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--curve", action="append", default=[], metavar="LABEL=FILE")
    ap.add_argument("--runs", action="append", default=[], metavar="FILE")
    ap.add_argument("--points")
    ap.add_argument("--only", help="draw only the runs whose label matches this regex")
    ap.add_argument("--hf", nargs=2, type=float, default=(0.33, 0.58))
    ap.add_argument("--psnr", nargs=2, type=float, default=(28.45, 29.2))
    ap.add_argument("--gmsd", nargs=2, type=float, default=(0.0760, 0.0810))
    a = ap.parse_args()

    curves = []
    for spec in a.curve:
        label, path = spec.rsplit("=", 1)
        pts = sorted((h, p, g) for lab, _, p, g, h in frontier_rows(path) if lab == "reference")
        curves.append((label, pts))
    runs, blends = {}, {}
    for path in a.runs:
        for lab, w, p, g, h in frontier_rows(path):
            if lab == "reference" or (a.only and not re.match(a.only, lab)):
                continue
            b = re.match(r"(.*-\d+)-a([\d.]+)$", lab)
            if b:
                blends.setdefault(b.group(1), []).append((float(b.group(2)), p, g, h))
                continue
            m = re.match(r"(.*)-(\d+)$", lab)
            run, step = (m.group(1), m.group(2)) if m else (lab, "")
            runs.setdefault(run, []).append((step, w, p, g, h))
    points = candidate_points(a.points) if a.points else []

    font = ImageFont.load_default(size=14)
    W, H = 1200, 900
    img = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((W / 2, 12), "Held-out images, x4: fidelity against detail (higher left panel, lower right panel is better)",
           fill=(0, 0, 0), font=font, anchor="mt")
    left = Panel(d, (80, 60, 560, 420), a.hf, a.psnr, "HF ratio", "PSNR-Y (dB)", font, "{:.2f}")
    right = Panel(d, (680, 60, 1160, 420), a.hf, a.gmsd, "HF ratio", "GMSD", font, "{:.4f}")

    legend = []
    for i, (label, pts) in enumerate(curves):
        c = CURVE_COLOURS[i] if i < len(CURVE_COLOURS) else COLOURS[i % len(COLOURS)]
        left.line([(h, p) for h, p, _ in pts], c)
        right.line([(h, g) for h, _, g in pts], c)
        for h, p, g in pts:
            left.marker(h, p, c, "s", 3)
            right.marker(h, g, c, "s", 3)
        legend.append(("line", c, label))
    for i, (run, pts) in enumerate(runs.items()):
        c = COLOURS[i % len(COLOURS)]
        steps = sorted({int(s) for s, *_ in pts if s})
        for step, w, p, g, h in pts:
            left.marker(h, p, c)
            right.marker(h, g, c)
        # the run's last step, labelled once (at its first w): where it went
        last = next((q for q in pts if steps and q[0] == str(steps[-1])), None)
        if last:
            left.note(last[4], last[2], last[0], c)
        span = f"steps {steps[0]}-{steps[-1]}, " if len(steps) > 1 else ""
        legend.append(("o", c, f"{run}: {span}w {', '.join(sorted({w for _, w, *_ in pts}))}"))
    for i, (at, pts) in enumerate(blends.items()):
        c = COLOURS[(len(runs) + i) % len(COLOURS)]
        pts.sort()
        for panel, k in ((left, 1), (right, 2)):
            panel.line([(q[3], q[k]) for q in pts if panel.inside(q[3], q[k])], c)
            for q in pts:
                panel.marker(q[3], q[k], c, "o", 3)
        lo = pts[0]
        left.note(lo[3], lo[1], f"a{lo[0]:g}", c)
        alphas = "-".join(f"{q[0]:g}" for q in (pts[0], pts[-1])) if len(pts) > 1 else f"{lo[0]:g}"
        legend.append(("o", c, f"{at} blended toward the reference: alpha {alphas}"))
    for name, p, g, h in points:
        c = (230, 120, 0) if "peer" in name else (0, 120, 0)
        for panel, y in ((left, p), (right, g)):
            panel.marker(h, y, c, "d", 5)
            panel.note(h, y, name, c)
        if not left.inside(h, p):
            legend.append(("d", c, f"{name}: off the plot at HF {h:.3f}, {p:.3f} dB, GMSD {g:.4f}"))
        else:
            legend.append(("d", c, name))

    y = 470
    for k, (shape, c, text) in enumerate(legend):
        x = 80 if k % 2 == 0 else 640
        if shape == "line":
            d.line([(x, y + 7), (x + 24, y + 7)], fill=c, width=2)
        else:
            mark(d, x + 12, y + 7, c, shape, 5 if shape == "d" else 4)
        d.text((x + 32, y + 7), text, fill=(0, 0, 0), font=font, anchor="lm")
        if k % 2 == 1:
            y += 20
    img = img.crop((0, 0, W, max(y + 30, 480)))
    img.save(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
