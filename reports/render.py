"""A report document (sections of text, tables and figures) written as Markdown and as one
self-contained HTML file (inline CSS, PNGs as base64 data URIs, no scripts). The only URLs in it
are links out to MLflow run pages, never a resource the page loads. A table wider than the page
(a search of many parameters) scrolls within its own box: the page keeps its width."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from reports.plots import Plot

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1250px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0 1.2em; font-size: 12px; display: block;
        max-width: 100%; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; vertical-align: top; }
th { background: #f0f2f5; }
td.text, th.text { text-align: left; }
tr:nth-child(even) td { background: #fafbfc; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 13px; color: #555; }
.problems { background: #fff1f0; border: 1px solid #e0a0a0; padding: .6em 1em; }
.notes { background: #f7f7e8; border: 1px solid #d8d8a8; padding: .6em 1em; }
.meta { color: #555; font-size: 13px; }
code { background: #f3f3f3; padding: 0 3px; }
"""


@dataclass(frozen=True)
class Link:
    """A table cell that links to ``url`` (a run's page on the MLflow server)."""

    text: str
    url: str

    def __str__(self) -> str:
        return self.text


Cell = str | Link


@dataclass
class Table:
    """Display-ready cells; ``text_columns`` are left-aligned in HTML."""

    columns: list[str]
    rows: Sequence[Sequence[Cell]]
    text_columns: set[str] = field(default_factory=set)


Block = str | list[str] | Table | Plot


@dataclass
class Section:
    """A heading and its blocks: strings (paragraphs), lists of strings, tables, plots."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    css_class: str = ""


@dataclass
class Document:
    title: str
    meta: list[str]
    sections: list[Section]


# --- number formatting ----------------------------------------------------------------------
def is_missing(value: object) -> bool:
    """None, NaN, pandas' NaT and NA (an Int64 column's blank)."""
    return (value is None or (isinstance(value, float) and math.isnan(value))
            or value is pd.NaT or value is pd.NA)


def fmt_num(value: Any, digits: int = 2) -> str:
    return "—" if is_missing(value) else f"{float(value):,.{digits}f}"


def fmt_int(value: Any) -> str:
    return "—" if is_missing(value) else f"{int(value):,}"


def fmt_gap(value: Any, base: Any) -> str:
    """An absolute gap with its relative size, e.g. ``+3.20 (+5.6%)``."""
    if is_missing(value) or is_missing(base):
        return "—"
    return f"{float(value):+.2f} ({100 * float(value) / float(base):+.1f}%)"


def fmt_value(value: Any) -> str:
    """A hyperparameter as read back (`search.results.parse_param`): ints as ints, floats to 3
    significant digits, anything else as it is."""
    if is_missing(value):
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.3g}"


def fmt_params(value: Any) -> str:
    if is_missing(value):
        return "—"
    value = float(value)
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}k"


# --- Markdown -------------------------------------------------------------------------------
def _md_cell(cell: Cell) -> str:
    text = str(cell).replace("|", "\\|").replace("\n", " ")
    if isinstance(cell, Link):
        text = text.replace("[", "\\[").replace("]", "\\]")
        url = cell.url.replace(" ", "%20").replace(")", "%29").replace("|", "%7C")
        return f"[{text}]({url})"
    return text


def _md_table(table: Table) -> str:
    head = "| " + " | ".join(_md_cell(c) for c in table.columns) + " |"
    rule = "|" + "|".join(":---" if c in table.text_columns else "---:"
                          for c in table.columns) + "|"
    body = ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in table.rows]
    return "\n".join([head, rule, *body])


def to_markdown(doc: Document) -> str:
    """Markdown with tables and PNGs linked by file name (the files sit next to it)."""
    out = [f"# {doc.title}", "", *[f"{m}  " for m in doc.meta], ""]
    for section in doc.sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                out += [_md_table(block), ""]
            elif isinstance(block, Plot):
                out += [f"![{block.title}]({block.path.name})", "", f"*{block.caption}*", ""]
            elif isinstance(block, list):
                out += [f"- {item}" for item in block] + [""]
            else:
                out += [block, ""]
    return "\n".join(out)


# --- HTML -----------------------------------------------------------------------------------
def _html_table(table: Table) -> str:
    def cls(col: str) -> str:
        return ' class="text"' if col in table.text_columns else ""

    def content(cell: Cell) -> str:
        if isinstance(cell, Link):
            return f'<a href="{html.escape(cell.url)}">{html.escape(cell.text)}</a>'
        return html.escape(str(cell))

    head = "".join(f"<th{cls(c)}>{html.escape(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td{cls(c)}>{content(v)}</td>"
                         for c, v in zip(table.columns, row, strict=True)) + "</tr>"
        for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_plot(plot: Plot) -> str:
    data = base64.b64encode(Path(plot.path).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(plot.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(plot.caption)}</figcaption></figure>")


def to_html(doc: Document) -> str:
    """One self-contained page: no external scripts, styles, fonts or images."""
    parts = [f"<h1>{html.escape(doc.title)}</h1>",
             '<p class="meta">' + "<br>".join(html.escape(m) for m in doc.meta) + "</p>"]
    for section in doc.sections:
        inner = [f"<h2>{html.escape(section.title)}</h2>"]
        for block in section.blocks:
            if isinstance(block, Table):
                inner.append(_html_table(block))
            elif isinstance(block, Plot):
                inner.append(_html_plot(block))
            elif isinstance(block, list):
                items = "".join(f"<li>{html.escape(i)}</li>" for i in block)
                inner.append(f"<ul>{items}</ul>")
            else:
                inner.append(f"<p>{html.escape(block)}</p>")
        klass = f' class="{section.css_class}"' if section.css_class else ""
        parts.append(f"<section{klass}>{''.join(inner)}</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(doc.title)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")
