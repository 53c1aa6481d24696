"""Markdown with markdown-it-py: headings open sections, paragraphs, list items, tables and code are blocks.

The title is the front matter's ``title`` (YAML between ``---`` lines, read with PyYAML), else the
first heading; the front matter's other keys are the document's metadata. Inline formatting is
dropped (``**a**`` is ``a``, a link is its text); a list item is one block starting ``- ``; a table
row is one line with its cells separated by `` | ``.
"""

from __future__ import annotations

from typing import Any

from dpr_pg.ingest.chunking import Block
from dpr_pg.ingest.documents.extra import require
from dpr_pg.ingest.documents.structure import ParsedDocument, UnreadableDocument, clean_text
from dpr_pg.ingest.documents.text import decode_text


def parse(data: bytes, name: str) -> ParsedDocument:
    """The blocks and title of a Markdown file; :class:`UnreadableDocument` when it holds no text.

    Example:
        >>> parse("# Sevilla\\n\\nEstá en Andalucía.".encode(), "s.md").blocks[0].sections
        ('Sevilla',)
    """
    text = decode_text(data, "Markdown")
    metadata, blocks, first_heading = markdown_blocks(text)
    if not blocks:
        raise UnreadableDocument("the Markdown file holds no text (only headings, markup or front matter)")
    title = metadata.pop("title", None)
    return ParsedDocument(str(title) if title else first_heading, metadata, blocks)


def markdown_blocks(text: str) -> tuple[dict[str, Any], list[Block], str | None]:
    """(front matter, blocks, first heading) of a Markdown text; also reads trafilatura's Markdown output."""
    markdown_it = require("markdown_it")
    require("mdit_py_plugins")
    from mdit_py_plugins.front_matter import front_matter_plugin  # lazy: optional; require() says how to install it

    parser = markdown_it.MarkdownIt("commonmark").enable("table").use(front_matter_plugin)
    tokens = parser.parse(text)
    metadata: dict[str, Any] = {}
    blocks: list[Block] = []
    path: list[tuple[int, str]] = []  # (level, heading) of the open sections
    first_heading: str | None = None
    rows: list[str] = []  # the table being read
    cells: list[str] = []
    item_depth = 0
    for index, token in enumerate(tokens):
        kind = token.type
        if kind == "front_matter":
            metadata = _front_matter(token.content)
        elif kind == "heading_open":
            heading = clean_text(_inline_text(tokens[index + 1]))
            if heading:
                level = int(token.tag[1:])
                path = [entry for entry in path if entry[0] < level] + [(level, heading)]
                first_heading = first_heading or heading
        elif kind == "list_item_open":
            item_depth += 1
        elif kind == "list_item_close":
            item_depth -= 1
        elif kind == "inline" and tokens[index - 1].type == "paragraph_open":
            paragraph = clean_text(_inline_text(token))
            if paragraph:
                prefix = "- " if item_depth and _first_in_item(tokens, index) else ""
                blocks.append(Block(prefix + paragraph, tuple(h for _, h in path)))
        elif kind in ("fence", "code_block"):
            code = clean_text(token.content)
            if code:
                blocks.append(Block(code, tuple(h for _, h in path)))
        elif kind == "inline" and tokens[index - 1].type in ("th_open", "td_open"):
            cells.append(clean_text(_inline_text(token)))
        elif kind == "tr_close":
            if any(cells):
                rows.append(" | ".join(cells))
            cells = []
        elif kind == "table_close":
            if rows:
                blocks.append(Block("\n".join(rows), tuple(h for _, h in path)))
            rows = []
    return metadata, blocks, first_heading


def _first_in_item(tokens: list[Any], index: int) -> bool:
    """Whether the paragraph at ``index`` is the first of its list item (``- `` marks the item once)."""
    return index >= 2 and tokens[index - 2].type == "list_item_open"


def _inline_text(token: Any) -> str:
    """The text of an inline token: text and code kept, markup and images dropped, line breaks as spaces."""
    parts = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return "".join(parts)


def _front_matter(content: str) -> dict[str, Any]:
    yaml = require("yaml")
    try:
        values = yaml.safe_load(content)
    except yaml.YAMLError:
        return {}  # front matter that is not YAML is not worth losing the document
    return {str(key): value for key, value in values.items()} if isinstance(values, dict) else {}
