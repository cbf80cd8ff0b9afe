"""Placeholder: filled in by the work on this module."""

from __future__ import annotations

__all__: list[str] = []
