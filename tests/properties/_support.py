"""Helpers shared by the property tests (not a test module)."""

from __future__ import annotations

from hypothesis import settings


def examples(weight: float = 1.0) -> settings:
    """Settings running ``weight`` times the active profile's number of examples (at least 2):
    expensive properties take a fraction, cheap ones a multiple, and all scale with the profile."""
    return settings(max_examples=max(2, round(settings.default.max_examples * weight)))
