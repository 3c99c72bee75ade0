"""A report as one list of sections, rendered to HTML and to Markdown.

The document is built once and rendered twice, so the two files cannot drift apart. The
HTML escapes every string it is given and embeds its figures (no network needed); the
Markdown links the figures in a folder beside it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Code:
    """Inline code: a path, a command, a name to type."""

    text: str


Inline: TypeAlias = str | Code


@dataclass(init=False)
class Paragraph:
    """Text with inline code; a ``rule`` paragraph says how the figure beside it was made."""

    parts: tuple[Inline, ...]
    rule: bool

    def __init__(self, *parts: Inline, rule: bool = False) -> None:
        self.parts, self.rule = parts, rule


@dataclass(frozen=True)
class Table:
    """A table shown without its index; numbers as ``format_value`` writes them."""

    frame: pd.DataFrame


@dataclass(frozen=True)
class Figure:
    """The PNG figure ``<name>.png``."""

    name: str


@dataclass(frozen=True)
class Bullets:
    """A bullet list of plain lines."""

    items: tuple[str, ...]


Block: TypeAlias = Paragraph | Table | Figure | Bullets


@dataclass
class Section:
    """A heading (level 1 is the document's title) and the blocks under it."""

    title: Inline | tuple[Inline, ...]
    blocks: list[Block]
    level: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.title, str | Code):
            self.title = (self.title,)


def format_value(value: object) -> str:
    """A table cell: four decimals at most, small numbers in e-notation, NaN as empty."""
    if isinstance(value, float | np.floating):
        if np.isnan(value):
            return ""
        return f"{value:.2e}" if 0 < abs(value) < 0.01 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def _cells(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.map(format_value).rename(columns=str)


STYLE = """body { font-family: sans-serif; max-width: 1150px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
td, th { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; } code { background: #f3f3f3; padding: 0.15em 0.3em; }
.rule { color: #555; font-size: 0.9em; }"""


def _html_inline(parts: Iterable[Inline]) -> str:
    return "".join(
        f"<code>{html.escape(p.text)}</code>" if isinstance(p, Code) else html.escape(p) for p in parts
    )


def _html_block(block: Block, figures: Mapping[str, bytes]) -> str:
    match block:
        case Paragraph(rule=True):
            return f'<p class="rule">{_html_inline(block.parts)}</p>'
        case Paragraph():
            return f"<p>{_html_inline(block.parts)}</p>"
        case Table(frame):
            return _cells(frame).to_html(index=False, escape=True, border=0)
        case Figure(name):
            data = base64.b64encode(figures[name]).decode()
            return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
        case Bullets(items):
            return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"
    raise TypeError(f"not a block: {block!r}")


def render_html(sections: list[Section], figures: Mapping[str, bytes], title: str) -> str:
    """One self-contained HTML page: every string escaped, ``figures`` (PNG bytes) embedded."""
    body = [
        f"<h{s.level}>{_html_inline(s.title)}</h{s.level}>\n"
        + "\n".join(_html_block(b, figures) for b in s.blocks)
        for s in sections
    ]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
        f"<style>\n{STYLE}\n</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _md_inline(parts: Iterable[Inline]) -> str:
    return "".join(f"`{p.text}`" if isinstance(p, Code) else p for p in parts)


def _md_block(block: Block, files_dir: str) -> str:
    match block:
        case Paragraph():
            return _md_inline(block.parts)
        case Table(frame):
            cells = _cells(frame).rename(columns=lambda c: c.replace("|", r"\|"))
            # Cells are text already: tabulate must not parse and reformat the numbers.
            return cells.map(lambda c: c.replace("|", r"\|")).to_markdown(index=False, disable_numparse=True)
        case Figure(name):
            return f"![{name}]({files_dir}/{name}.png)"
        case Bullets(items):
            return "\n".join(f"- {i}" for i in items)
    raise TypeError(f"not a block: {block!r}")


def render_markdown(sections: list[Section], files_dir: str) -> str:
    """The same sections as Markdown, figures linked as ``<files_dir>/<name>.png``."""
    lines = []
    for s in sections:
        lines += ["#" * s.level + " " + _md_inline(s.title), *(_md_block(b, files_dir) for b in s.blocks)]
    return "\n\n".join(lines) + "\n"
