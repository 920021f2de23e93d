"""The models package's error: a model entry, its weights or a layer name is wrong."""

from __future__ import annotations

from unitscope.errors import UnitscopeError


class ModelError(UnitscopeError, ValueError):
    """A model entry, its checkpoint or a layer name is wrong; the message is one line."""
