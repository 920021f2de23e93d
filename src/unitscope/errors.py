"""The one error family of unitscope.

Every problem with what a user gave (config, data, model, layer name, files) or with the machine (a full disk)
is a `UnitscopeError` whose message is one line naming the key, file or layer and what was expected. The
workflow scripts report such an error as that one line (no traceback); anything else is a bug and keeps its
traceback in the job's log.
"""

from __future__ import annotations


class UnitscopeError(Exception):
    """A one-line, user-facing problem: the base of every unitscope error class."""


def one_line(text: object, limit: int | None = None) -> str:
    """`text` with its whitespace (line breaks too) collapsed to single spaces, cut to `limit` characters with an
    ellipsis: how a message from a library is quoted inside a unitscope error line."""
    text = " ".join(str(text).split())
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"
