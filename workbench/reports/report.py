"""Standalone offline HTML reports: plotly.js inlined once, no CDN, written atomically.

A report is a title, sections of figures and HTML snippets, and its provenance folded away in a
`<details>` element. Helpers format numbers for people: `ci` ("+0.236 [+0.114, +0.359]"), `pval`,
`percent`; `table_html` draws a list of dicts or a DataFrame with numbers right-aligned.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from numbers import Real
from pathlib import Path
from typing import Iterable

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from ..base.fileio import atomic_write

_STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1.2em; color: #222; line-height: 1.5; }
h1 { font-size: 1.65em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.15em; }
h3 { font-size: 1.05em; margin: 1.4em 0 0.3em; }
.subtitle { color: #555; margin-top: 0; }
nav.toc { font-size: 0.92em; color: #555; } nav.toc a { margin-right: 1em; color: #0b5cad; }
table { border-collapse: collapse; margin: 0.7em 0; max-width: 100%; font-size: 0.9em; }
td, th { border-bottom: 1px solid #ddd; padding: 0.3em 0.65em; text-align: left;
         vertical-align: top; overflow-wrap: break-word; }
th { background: #f4f4f4; font-weight: 600; border-bottom: 2px solid #ccc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th.num { text-align: right; }
details td { overflow-wrap: anywhere; }
table.findings td:first-child { width: 24%; } table.findings td:last-child { width: 20%; }
.verdict { font-weight: 600; } .verdict.yes { color: #1a7f37; } .verdict.no { color: #b42318; }
.verdict.mixed { color: #8a5a00; } .verdict.none { color: #666; }
.note { color: #555; font-size: 0.92em; }
.figure { margin: 0.8em 0 1.4em; max-width: 100%; }
details.provenance { margin: 0.8em 0; } details > summary { cursor: pointer; color: #0b5cad; }
details table { font-size: 0.85em; } details table table { margin: 0; font-size: 1em; }
code { background: #f3f3f3; padding: 0 0.25em; border-radius: 3px; overflow-wrap: anywhere; }
pre { background: #f7f7f7; padding: 0.6em; font-size: 0.8em; max-height: 30em; overflow-y: auto;
      white-space: pre-wrap; overflow-wrap: anywhere; }
"""


class Raw(str):
    """Text that `table_html` puts into a cell as HTML (not escaped): links, <b>, <code>."""


def ci(value: float, interval, digits: int = 3, signed: bool = True) -> str:
    """"+0.236 [+0.114, +0.359]": a value with its interval, `digits` decimals, signs shown when
    `signed` (gaps, correlations); "n/a" for a missing value."""
    sign = "+" if signed else ""
    f = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else (  # noqa: E731
        f"{v:{sign}.{digits}f}")
    if interval is None:
        return f(value)
    lo, hi = interval
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (lo, hi)):
        return f(value)
    return f"{f(value)} [{f(lo)}, {f(hi)}]"


def pval(p: float) -> str:
    """A p-value to two significant digits, "< 0.001" below that, "n/a" when missing."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    if p < 0.001:
        return "< 0.001"
    return f"{p:.2g}" if p < 0.1 else f"{p:.2f}"


def percent(rate: float) -> str:
    """A rate as a percentage without trailing zeros: 0.0005 -> "0.05%", 0.1 -> "10%"."""
    return f"{100 * rate:.4g}%"


_NUMBER = re.compile(r"^[+-]?(\d[\d,]*\.?\d*(e[+-]?\d+)?%?|n/a|< ?0\.\d+)"
                     r"( \[[+-]?[\d.]+, [+-]?[\d.]+\])?( \(.*\))?$")


def table_html(rows, floatfmt: str = "{:.4g}", classes: str = "") -> str:
    """An HTML table of `rows`: a list of dicts (their keys are the header) or a DataFrame.
    Numbers and number-like text ("+0.24 [+0.11, +0.36]", "5%") are right-aligned; `Raw` values
    are put in as HTML, everything else escaped."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a DataFrame
        cols = [str(c) for c in rows.columns]
        rows = [dict(zip(cols, r)) for r in rows.itertuples(index=False, name=None)]
    else:
        rows = list(rows)
        cols = list(dict.fromkeys(k for r in rows for k in r))
    if not rows:
        return "<p class='note'>(no rows)</p>"

    def cell(v):
        if isinstance(v, Raw):
            return "", str(v)
        if isinstance(v, Real) and not isinstance(v, bool):
            text = floatfmt.format(v) if isinstance(v, float) else str(v)
            return " class='num'", html.escape(text)
        text = "" if v is None else str(v)
        return (" class='num'" if _NUMBER.match(text) else ""), html.escape(text)

    numeric = {c: all(cell(r.get(c))[0] for r in rows if r.get(c) not in (None, "")) for c in cols}
    head = "".join(f"<th{' class=num' if numeric[c] else ''}>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join("<td{}>{}</td>".format(*cell(r.get(c))) for c in cols)
                   + "</tr>" for r in rows)
    cls = f" class='{html.escape(classes)}'" if classes else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _value_html(v, depth: int = 0) -> str:
    """Provenance values: dicts as key/value tables, lists of dicts as tables, the rest as text."""
    if isinstance(v, dict):
        if not v:
            return "–"
        return ("<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_value_html(x, depth + 1)}"
                                    "</td></tr>" for k, x in v.items()) + "</table>")
    if isinstance(v, (list, tuple)):
        if v and all(isinstance(x, dict) for x in v):
            return table_html([{k: _plain(x) for k, x in r.items()} for r in v])
        if all(not isinstance(x, (dict, list, tuple)) for x in v):
            return html.escape(", ".join(str(x) for x in v)) or "–"
        return f"<code>{html.escape(json.dumps(v, default=str))}</code>"
    if v is None:
        return "–"
    return html.escape(str(v))


def _plain(v):
    return v if isinstance(v, (str, Real)) or v is None else json.dumps(v, default=str)


def write_report(path: str | os.PathLike, title: str,
                 sections: Iterable[tuple[str, list[go.Figure | str]]],
                 metadata: dict | None = None, subtitle: str | None = None) -> Path:
    """Write one HTML file: `sections` are (heading, [figure or HTML snippet, ...]).

    The first figure carries plotly.js inline (about 4.5 MB); the rest reuse it. Figures fill the
    page's width (responsive) at their layout's height. `metadata` (command, seeds, settings,
    versions) goes at the end, folded in a <details> element, as tables and as JSON.
    """
    path = Path(path)
    sections = [(h, list(items)) for h, items in sections]
    anchors = [re.sub(r"[^a-z0-9]+", "-", h.lower()).strip("-") for h, _ in sections]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
             f"<h1>{html.escape(title)}</h1>"]
    if subtitle:
        parts.append(f"<p class='subtitle'>{subtitle}</p>")
    if len(sections) > 2:
        links = [(a, h) for a, (h, _) in zip(anchors, sections)]
        if metadata is not None:
            links.append(("provenance", "Provenance"))
        parts.append("<nav class='toc'>" + "".join(f"<a href='#{a}'>{html.escape(h)}</a>"
                                                   for a, h in links) + "</nav>")
    first = True
    for anchor, (heading, items) in zip(anchors, sections):
        parts.append(f"<h2 id='{anchor}'>{html.escape(heading)}</h2>")
        for item in items:
            if isinstance(item, go.Figure):
                parts.append("<div class='figure'>" + pio.to_html(
                    item, full_html=False, include_plotlyjs=first, default_width="100%",
                    config={"displaylogo": False, "responsive": True}) + "</div>")
                first = False
            else:
                parts.append(str(item))
    if metadata is not None:
        parts.append("<h2 id='provenance'>Provenance</h2><details class='provenance'><summary>How "
                     "this report was made: command, seeds, settings, versions</summary>"
                     + _value_html(metadata) + "<details><summary>the same as JSON</summary><pre>"
                     + html.escape(json.dumps(metadata, indent=1, default=str)) + "</pre></details>"
                     "</details>")
    parts.append("</body></html>")
    atomic_write(path, "".join(parts))  # mode 0644: a report is for sharing
    return path


# ---- phrases shared by the report's sections ----

def verdict_span(text: str, tone: str) -> Raw:
    """A verdict cell; tone: "yes" (as the paper says), "no" (against it), "mixed", "none"."""
    return Raw(f"<span class='verdict {tone}'>{html.escape(text)}</span>")


def direction(lo: np.ndarray, hi: np.ndarray) -> tuple[str, str, str]:
    """(counts, verdict, tone) of gap intervals: above 0 (smoother), below 0, or including 0."""
    n, above, below = len(lo), int((lo > 0).sum()), int((hi < 0).sum())
    counts = f"{above} of {n} intervals above 0, {below} below"
    if n == 0:
        return "no such run", "not measured", "none"
    if above == n:
        return counts, "smoother", "yes"
    if below == n:
        return counts, "less smooth", "no"
    if above == below == 0:
        return counts, "no measurable effect", "none"
    return counts, "mixed", "mixed"


def runs_phrase(n: int, what: str = "run") -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")
