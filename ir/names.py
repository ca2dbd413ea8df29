"""Value names in IR text.

A value is named after the module path it comes from (``blocks.conv-1.weight``) or the
graph node that made it, so a name may hold any printable character.  Names of letters,
digits, ``_`` and ``.`` print as they are (``%conv.weight``); any other is quoted with
backslash escapes (``%"blocks.conv-1.weight"``), and the parser reads both back.
"""

from __future__ import annotations

import re

#: names printed without quotes
PLAIN_NAME = re.compile(r"[A-Za-z0-9_.]+")


def format_name(name: str) -> str:
    """A value's name in IR text: ``%conv.weight``, or quoted when it holds other characters."""
    if PLAIN_NAME.fullmatch(name):
        return "%" + name
    return '%"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_name(token: str) -> str:
    """The name a ``%name`` or ``%"quoted name"`` token stands for (:func:`format_name`'s inverse)."""
    if token.startswith('%"'):
        return re.sub(r"\\(.)", r"\1", token[2:-1])
    return token[1:]
