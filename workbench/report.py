"""Standalone offline HTML reports: plotly.js inlined once, no CDN, written atomically."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Iterable

import plotly.graph_objects as go
import plotly.io as pio

from .fileio import atomic_write

_STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; font-size: 0.92em; }
th { background: #f4f4f4; } .note { color: #555; font-size: 0.92em; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
"""


def table_html(rows: Iterable[dict], floatfmt: str = "{:.4g}") -> str:
    rows = list(rows)
    if not rows:
        return "<p class='note'>(no rows)</p>"
    cols = list(rows[0])
    fmt = lambda v: floatfmt.format(v) if isinstance(v, float) else str(v)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r.get(c, '')))}</td>" for c in cols)
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(path: str | os.PathLike, title: str,
                 sections: Iterable[tuple[str, list[go.Figure | str]]],
                 metadata: dict | None = None) -> Path:
    """Write one HTML file: `sections` are (heading, [figure or HTML snippet, ...]).

    The first figure carries plotly.js inline (about 4.5 MB); the rest reuse it. `metadata`
    (configuration, versions) is appended as JSON so a report says where it came from.
    """
    path = Path(path)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    first = True
    for heading, items in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for item in items:
            if isinstance(item, go.Figure):
                parts.append(pio.to_html(item, full_html=False, include_plotlyjs=first,
                                         config={"displaylogo": False}))
                first = False
            else:
                parts.append(str(item))
    if metadata is not None:
        parts.append("<h2>Provenance</h2><pre>"
                     + html.escape(json.dumps(metadata, indent=1, default=str)) + "</pre>")
    parts.append("</body></html>")
    atomic_write(path, "".join(parts))  # mode 0644: a report is for sharing
    return path
