"""The nefesi study's run-time error (parse-time errors are plan.NefesiConfigError)."""

from __future__ import annotations

from unitscope.errors import UnitscopeError


class NefesiError(UnitscopeError, ValueError):
    """Bad input or a result that cannot be trusted; the message is one line."""
