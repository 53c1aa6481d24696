"""A griffe extension for the API pages: dpr_pg's docstrings, written for help() and doctest, read as Markdown.

They carry their examples as bare doctest lines, which Markdown would run into the paragraph around
them (reading ``[3, 3]`` as a link): each run of them is fenced as ``pycon``. Their Sphinx roles
(``:func:`search```) become plain code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe


def fence_doctests(text: str) -> str:
    """Wrap each block of ``>>>`` lines and their output in a ```pycon fence.

    >>> fence_doctests("Adds.\\n>>> 1 + 1\\n2").splitlines()
    ['Adds.', '```pycon', '>>> 1 + 1', '2', '```']
    """
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.startswith(">>>") and not inside:
            out.append("```pycon")
            inside = True
        elif inside and not line.strip():
            out.append("```")
            inside = False
        out.append(line)
    if inside:
        out.append("```")
    return "\n".join(out)


_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):`~?([^`]+)`")


def plain_roles(text: str) -> str:
    """A Sphinx cross-reference role as inline code.

    >>> plain_roles("See :func:`search` and :class:`~dpr_pg.Hits`.")
    'See `search` and `dpr_pg.Hits`.'
    """
    return _ROLE.sub(r"`\1`", text)


class DoctestFences(griffe.Extension):
    """Fences the doctest examples of every loaded object's docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # noqa: ARG002
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(fence_doctests(obj.docstring.value))
