"""A lint for the book's plotly figures: what makes a figure unreadable at the book's column width.

`lint_figure` takes a figure (a ``go.Figure`` or its JSON dict, as in a page) and returns one line per defect:

- ``axis title``: an axis that shows tick labels has no title (3-D scenes: an axis left as x/y/z);
- ``same colour``: two legend entries drawn in one colour in one panel;
- ``title width``: a subplot title wider than its panel, or the figure's title wider than the figure;
- ``annotation range``: an annotation in data coordinates that sticks out of its panel's data, so the autorange
  stretches to hold it (plotly fits annotations into autoranged axes);
- ``minor digits``: a log axis on which plotly's automatic ticks label the digits 2..9 between powers of ten;
- ``empty entry``: a legend entry whose trace has no finite data;
- ``legend name``: a legend entry without a name, or two entries with one name;
- ``colour bar``: colour-scaled data with no colour bar.

Sizes are estimated, not measured: a figure without a width is drawn `BOOK_WIDTH` px wide (the book's column at a
1280 px window), text is about `CHAR_EM` em per character. `page_figures` reads the figures out of a built page.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path

import numpy as np

BOOK_WIDTH = 688  # px: a figure's width in the book's column in a 1280 px window (measured in Chromium; 358 at 390 px)
DEFAULT_MARGIN = dict(l=80, r=80, t=100, b=80)  # plotly's
DEFAULT_HEIGHT = 450
LEGEND_FONT = 12
NO_LEGEND_TYPES = {"heatmap", "histogram2d", "histogram2dcontour", "contour", "surface", "mesh3d", "pie"}
TYPED = {"f8": np.float64, "f4": np.float32, "i1": np.int8, "u1": np.uint8, "i2": np.int16, "u2": np.uint16,
         "i4": np.int32, "u4": np.uint32, "i8": np.int64, "u8": np.uint64}
FALLBACK_COLORWAY = ["#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880",
                     "#FF97FF", "#FECB52"]


# --------------------------------------------------------------------------------------------------- reading figures


def figure_dict(fig) -> dict:
    """Return a figure as a plain JSON dict ({'data': [...], 'layout': {...}}), typed arrays left encoded."""
    if isinstance(fig, dict):
        return fig
    return json.loads(fig.to_json())


def page_figures(text: str) -> list[dict]:
    """Return every plotly figure of a built HTML page's text (the arguments of its Plotly.newPlot calls), in order."""
    decoder = json.JSONDecoder()
    out = []
    for m in re.finditer(r"Plotly\.newPlot\(\s*", text):
        i = m.end()
        values = []
        for _ in range(3):  # the div's id, the data, the layout
            value, i = decoder.raw_decode(text, i)
            values.append(value)
            i = re.compile(r"\s*,\s*").match(text, i).end()
        out.append({"id": values[0], "data": values[1], "layout": values[2]})
    return out


def values(v) -> np.ndarray:
    """Return a trace's array (a list, or plotly's {'dtype', 'bdata'} typed array) as a flat float array; text -> nan."""
    if v is None:
        return np.empty(0)
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=TYPED[v["dtype"]]).astype(float).ravel()
    if isinstance(v, (int, float)):
        return np.array([float(v)])
    flat = []
    for x in v:
        if isinstance(x, (list, dict)):
            flat.extend(values(x).tolist())
        else:
            flat.append(x)
    out = np.full(len(flat), np.nan)
    for i, x in enumerate(flat):
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            out[i] = x
    return out


def _categorical(v) -> bool:
    return isinstance(v, list) and any(isinstance(x, str) for x in v)


def text_width(text: str, size: float) -> float:
    """Return the estimated width in px of one label (its longest line) in plotly's font at `size` px."""
    lines = re.split(r"<br\s*/?>", str(text or ""))
    return max((sum(_char_em(c) for c in html.unescape(re.sub(r"<[^>]+>", "", line))) for line in lines),
               default=0.0) * size


def _char_em(c: str) -> float:
    if c in " .,:;'|!()[]ijlftrI/":
        return 0.32
    if c in "mwMW@%":
        return 0.88
    if c.isupper() or c in "≥≤±²⁻³":
        return 0.66
    if c.isdigit():
        return 0.57
    return 0.54


def _lines(text: str) -> int:
    return len(re.split(r"<br\s*/?>", str(text or "")))


# ------------------------------------------------------------------------------------------------------ geometry


class Geometry:
    """A figure's size in px: the plot area after margins, and each panel's width and height."""

    def __init__(self, fig: dict, width: float):
        lay = fig.get("layout", {})
        self.width = float(lay.get("width") or width)
        self.height = float(lay.get("height") or DEFAULT_HEIGHT)
        margin = {**DEFAULT_MARGIN, **(lay.get("margin") or {})}
        right = margin["r"]
        legend = lay.get("legend") or {}
        if legend_shown(fig) and legend.get("orientation", "v") == "v" and float(legend.get("x", 1.02)) >= 1:
            names = [t.get("name", "") for t in fig["data"] if _in_legend(t)]
            size = (legend.get("font") or {}).get("size", LEGEND_FONT)
            right = max(right, max((text_width(n, size) for n in names), default=0) + 50)
        self.plot_w = max(1.0, self.width - margin["l"] - right)
        self.plot_h = max(1.0, self.height - margin["t"] - margin["b"])

    def length(self, axis: dict, letter: str) -> float:
        """Return an axis's length in px (its domain times the plot area)."""
        lo, hi = axis.get("domain", [0, 1])
        return (hi - lo) * (self.plot_w if letter == "x" else self.plot_h)


def _axis_key(ref: str) -> str:
    """'x2' -> 'xaxis2', 'y' -> 'yaxis'."""
    return f"{ref[0]}axis{ref[1:]}"


def _is_3d(trace: dict) -> bool:
    return trace.get("type") in ("scatter3d", "surface", "mesh3d", "cone", "streamtube", "isosurface", "volume")


def _panel(trace: dict) -> tuple[str, ...]:
    if _is_3d(trace):
        return (trace.get("scene", "scene"),)
    return (trace.get("xaxis", "x"), trace.get("yaxis", "y"))


def _visible(trace: dict) -> bool:
    return trace.get("visible", True) is not False


# -------------------------------------------------------------------------------------------------------- legends


def _in_legend(trace: dict) -> bool:
    if not _visible(trace):
        return False
    if trace.get("type") in NO_LEGEND_TYPES:
        return trace.get("showlegend") is True
    return trace.get("showlegend", True) is not False


def legend_shown(fig: dict) -> bool:
    """Whether plotly draws a legend: layout.showlegend, else two or more entries (or one forced on)."""
    shown = fig.get("layout", {}).get("showlegend")
    if shown is not None:
        return bool(shown)
    entries = [t for t in fig["data"] if _in_legend(t)]
    return len(entries) > 1 or any(t.get("showlegend") is True for t in entries)


def _entry(trace: dict, index: int) -> tuple[str, str]:
    """A legend entry's identity: its legend group, or else the trace itself; and its name."""
    return trace.get("legendgroup") or f"#{index}", trace.get("name") or ""


def _colorway(fig: dict) -> list[str]:
    lay = fig.get("layout", {})
    return (lay.get("colorway") or ((lay.get("template") or {}).get("layout") or {}).get("colorway")
            or FALLBACK_COLORWAY)


def trace_color(trace: dict, index: int, colorway: list[str]) -> str | None:
    """Return the one colour a trace is drawn in (explicit, else plotly's default for its index); None when it is
    coloured by data."""
    line, marker = trace.get("line") or {}, trace.get("marker") or {}
    mode = trace.get("mode", "lines" if trace.get("type") in ("scatter", "scattergl") else "markers")
    if trace.get("type") in ("bar", "histogram", "box", "violin"):
        order = [marker.get("color"), line.get("color")]
    elif "lines" in str(mode):
        order = [line.get("color"), marker.get("color")]
    else:
        order = [marker.get("color"), line.get("color")]
    if trace.get("fill") not in (None, "none") and "lines" not in str(mode):
        order.insert(0, trace.get("fillcolor"))
    for c in order:
        if c is None:
            continue
        return None if isinstance(c, (list, dict)) else re.sub(r"\s+", "", str(c)).lower()
    return colorway[index % len(colorway)].lower()


def check_legend(fig: dict) -> list[str]:
    """Same colour, empty entry and legend name problems."""
    if not legend_shown(fig):
        return []
    out, colorway = [], _colorway(fig)
    shown = [(i, t) for i, t in enumerate(fig["data"]) if _in_legend(t)]
    shown_keys = {_entry(t, i) for i, t in shown}
    for i, t in shown:
        name = t.get("name")
        if not name or re.fullmatch(r"trace \d+", str(name)):
            out.append(f"legend name: trace {i} is in the legend without a name")
        if not _has_data(t):
            out.append(f"empty entry: legend entry {name!r} has no data")
    names: dict[str, set] = {}
    for i, t in shown:
        names.setdefault(t.get("name") or "", set()).add(_entry(t, i))
    for name, keys in names.items():
        if name and len(keys) > 1:
            out.append(f"legend name: {len(keys)} legend entries are named {name!r}")
    panels: dict[tuple, dict[str, set]] = {}
    for i, t in enumerate(fig["data"]):
        key = _entry(t, i)
        if key not in shown_keys or not _visible(t):
            continue
        color = trace_color(t, i, colorway)
        if color is not None:
            panels.setdefault(_panel(t), {}).setdefault(color, set()).add(key)
    for panel, by_color in panels.items():
        for color, keys in by_color.items():
            if len(keys) > 1:
                listed = ", ".join(repr(k[1] or k[0]) for k in sorted(keys, key=lambda k: (k[1], k[0])))
                out.append(f"same colour: legend entries {listed} share {color} in panel {'/'.join(panel)}")
    return out


def _has_data(trace: dict) -> bool:
    keys = ("x", "y", "z") if _is_3d(trace) else ("y", "x") if trace.get("type") != "histogram" else ("x", "y")
    for k in keys:
        v = trace.get(k)
        if v is None:
            continue
        if _categorical(v) and len(v):
            continue
        arr = values(v)
        if arr.size == 0 or not np.isfinite(arr).any():
            return False
        if k == "y" and trace.get("type") == "bar" and not np.nan_to_num(arr).any():
            return False  # bars all of height 0: nothing drawn
    return any(trace.get(k) is not None for k in keys)


# ----------------------------------------------------------------------------------------------------------- axes


def _used_axes(fig: dict) -> dict[str, list[dict]]:
    """Return {'xaxis2': [traces on it], ...} for the 2-D axes that visible traces use."""
    used: dict[str, list[dict]] = {}
    for t in fig["data"]:
        if _visible(t) and not _is_3d(t) and t.get("type") not in ("pie", "table", "sankey"):
            for ref in _panel(t):
                used.setdefault(_axis_key(ref), []).append(t)
    return used


def _title(axis: dict) -> str:
    title = axis.get("title")
    if isinstance(title, dict):
        title = title.get("text")
    return str(title or "").strip()


def check_axis_titles(fig: dict) -> list[str]:
    """Every axis that shows tick labels has a title; every 3-D axis a title other than its letter."""
    lay, out = fig.get("layout", {}), []
    for key in sorted(_used_axes(fig)):
        axis = lay.get(key) or {}
        if axis.get("visible") is False or axis.get("showticklabels") is False:
            continue
        if not _title(axis):
            out.append(f"axis title: {key} shows tick labels but has no title")
    scenes = {t.get("scene", "scene") for t in fig["data"] if _is_3d(t) and _visible(t)}
    for scene in sorted(scenes):
        s = lay.get(scene) or {}
        for letter in "xyz":
            title = _title(s.get(f"{letter}axis") or {})
            if title in ("", letter):
                out.append(f"axis title: {scene}.{letter}axis is untitled (plotly shows {letter!r})")
    return out


def _axis_extent(traces: list[dict], letter: str, log: bool) -> tuple[float, float] | None:
    parts = []
    for t in traces:
        v = values(t.get(letter)) if not _categorical(t.get(letter)) else np.empty(0)
        if t.get(letter) is None and t.get("type") in ("bar", "histogram") and letter == "x":
            v = np.arange(len(values(t.get("y"))))
        v = v[np.isfinite(v)]
        if log:
            v = np.log10(v[v > 0])
        if v.size:
            parts.append(v)
    if not parts:
        return None
    allv = np.concatenate(parts)
    return float(allv.min()), float(allv.max())


def check_log_ticks(fig: dict, width: float = BOOK_WIDTH) -> list[str]:
    """Log axes on which plotly's automatic ticks would label the digits 2..9 (less than 0.7 decades per tick)."""
    lay, out, geo = fig.get("layout", {}), [], Geometry(fig, width)
    for key, traces in sorted(_used_axes(fig).items()):
        axis = lay.get(key) or {}
        if axis.get("type") != "log" or axis.get("tickvals") is not None or axis.get("showticklabels") is False:
            continue
        dtick = axis.get("dtick")
        if isinstance(dtick, (int, float)) and dtick >= 1 and float(dtick).is_integer():
            continue
        if isinstance(dtick, str) and dtick.startswith("D"):
            out.append(f"minor digits: {key} is a log axis with dtick {dtick!r}")
            continue
        if axis.get("range") is not None:
            lo, hi = sorted(axis["range"])
        else:
            extent = _axis_extent(traces, key[0], log=True)
            if extent is None:
                continue
            lo, hi = extent
        px = geo.length(axis, key[0])
        nticks = axis.get("nticks") or min(9, max(4, px / (40 if key[0] == "y" else 80)))
        if (hi - lo) / nticks <= 0.7:
            out.append(f"minor digits: {key} is a log axis over {hi - lo:.2f} decades: plotly labels 2..9 between "
                       "powers of ten (set tickvals or an integer dtick)")
    return out


def check_annotation_ranges(fig: dict, width: float = BOOK_WIDTH, slack: float = 0.02) -> list[str]:
    """Annotations in data coordinates on an autoranged axis that reach past its data (more than `slack` of its span)."""
    lay, out, geo = fig.get("layout", {}), [], Geometry(fig, width)
    used = _used_axes(fig)
    for n, ann in enumerate(lay.get("annotations") or []):
        size = (ann.get("font") or {}).get("size", 12)
        for letter in "xy":
            ref = ann.get(f"{letter}ref", letter)
            if not re.fullmatch(rf"{letter}\d*", ref or ""):
                continue  # paper or domain coordinates never move a range
            key = _axis_key(ref)
            axis = lay.get(key) or {}
            if axis.get("range") is not None or axis.get("autorange") is False or axis.get("type") == "category":
                continue
            log = axis.get("type") == "log"
            extent = _axis_extent(used.get(key, []), letter, log)
            if extent is None:
                continue
            pos = ann.get(letter)
            if not isinstance(pos, (int, float)):
                continue
            pos = math.log10(pos) if log and pos > 0 else float(pos)
            lo = min(extent[0], pos)
            hi = max(extent[1], pos)
            span, px = (hi - lo) or 1.0, geo.length(axis, letter)
            if letter == "x":
                extent_px = text_width(ann.get("text", ""), size) + 4
                anchor = ann.get("xanchor", "auto")
                shift = ann.get("xshift", 0)
                left, right = {"left": (0, 1), "right": (1, 0)}.get(anchor, (0.5, 0.5))
            else:
                extent_px = _lines(ann.get("text", "")) * size * 1.3 + 4
                anchor = ann.get("yanchor", "auto")
                shift = ann.get("yshift", 0)
                left, right = {"bottom": (0, 1), "top": (1, 0)}.get(anchor, (0.5, 0.5))
            per_px = span / px
            box = (pos + (shift - left * extent_px) * per_px, pos + (shift + right * extent_px) * per_px)
            if box[0] < lo - slack * span or box[1] > hi + slack * span:
                out.append(f"annotation range: annotation {n} ({ann.get('text', '')!r}) reaches past the data of "
                           f"{key} ({box[0]:.3g}..{box[1]:.3g} against {lo:.3g}..{hi:.3g}{', log10' if log else ''}),"
                           " so its autorange stretches")
    return out


# ------------------------------------------------------------------------------------------------------- titles


def _subplot_titles(lay: dict) -> list[dict]:
    return [a for a in lay.get("annotations") or [] if a.get("xref") == "paper" and a.get("yref") == "paper"
            and a.get("showarrow") is False and a.get("xanchor") == "center" and a.get("yanchor") == "bottom"]


def check_titles(fig: dict, width: float = BOOK_WIDTH) -> list[str]:
    """A subplot title wider than its panel, or the figure's title wider than the figure."""
    lay, out, geo = fig.get("layout", {}), [], Geometry(fig, width)
    domains = [tuple((lay.get(k) or {}).get("domain", [0, 1])) for k in lay if re.fullmatch(r"xaxis\d*", k)]
    domains += [tuple((lay.get(k) or {}).get("domain", {}).get("x", [0, 1])) for k in lay if re.fullmatch(r"scene\d*", k)]
    for ann in _subplot_titles(lay):
        near = [d for d in domains if abs((d[0] + d[1]) / 2 - float(ann.get("x", 0.5))) < 1e-3]
        if not near:
            continue
        panel = (near[0][1] - near[0][0]) * geo.plot_w
        need = text_width(ann.get("text", ""), (ann.get("font") or {}).get("size", 16))
        if need > panel:
            out.append(f"title width: subplot title {ann.get('text')!r} needs about {need:.0f} px; its panel is "
                       f"{panel:.0f} px wide at a {geo.width:.0f} px figure")
    title = lay.get("title")
    text = title.get("text") if isinstance(title, dict) else title
    if text:
        size = ((title.get("font") or {}) if isinstance(title, dict) else {}).get("size", 17)
        x = float(title.get("x", 0.05)) if isinstance(title, dict) else 0.05
        need = text_width(text, size)
        room = geo.width * (1 - x) - 10
        if need > room:
            out.append(f"title width: the title {text!r} needs about {need:.0f} px; the figure leaves {room:.0f} px")
    return out


# --------------------------------------------------------------------------------------------------- colour bars


def check_colour_bars(fig: dict) -> list[str]:
    """Colour-scaled traces (heatmaps, markers coloured by value) of which none shows a colour bar."""
    scaled, shown = [], False
    for i, t in enumerate(fig["data"]):
        if not _visible(t):
            continue
        if t.get("type") in ("heatmap", "histogram2d", "contour", "surface"):
            scaled.append(i)
            shown |= t.get("showscale", True) is not False and not t.get("coloraxis")
        marker = t.get("marker") or {}
        if isinstance(marker.get("color"), (list, dict)) and marker.get("colorscale") is not None:
            scaled.append(i)
            shown |= marker.get("showscale") is True
    if any(k.startswith("coloraxis") and (v or {}).get("showscale", True) is not False
           for k, v in fig.get("layout", {}).items()):
        shown = True
    return [f"colour bar: traces {scaled} are coloured by value but no colour bar shows"] if scaled and not shown else []


# ----------------------------------------------------------------------------------------------------------- all


def lint_figure(fig, width: float = BOOK_WIDTH) -> list[str]:
    """Return every defect of one figure (empty when it reads), each line starting with the check's name."""
    d = figure_dict(fig)
    d.setdefault("data", [])
    d.setdefault("layout", {})
    return (check_axis_titles(d) + check_legend(d) + check_titles(d, width) + check_annotation_ranges(d, width)
            + check_log_ticks(d, width) + check_colour_bars(d))


def figure_name(fig: dict) -> str:
    """Return a figure's title (or its div id) to name it in a report."""
    title = fig.get("layout", {}).get("title")
    text = title.get("text") if isinstance(title, dict) else title
    return str(text or fig.get("id") or "untitled figure")


def lint_pages(pages: list[Path], width: float = BOOK_WIDTH) -> dict[str, list[str]]:
    """Return {'page.html #k title': [defects]} for every figure of the pages that has a defect."""
    report = {}
    for page in pages:
        for k, fig in enumerate(page_figures(Path(page).read_text()), 1):
            found = lint_figure(fig, width)
            if found:
                report[f"{Path(page).name} #{k} {figure_name(fig)}"] = found
    return report
