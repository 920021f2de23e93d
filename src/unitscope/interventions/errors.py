"""The interventions' error (light: the table-only stages that draw controls import it without torch)."""

from __future__ import annotations

from unitscope.errors import UnitscopeError


class InterventionError(UnitscopeError, ValueError):
    """A layer or model an intervention cannot act on, or inputs that do not fit together; one line."""
