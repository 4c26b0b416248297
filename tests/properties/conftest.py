"""Hypothesis profiles for the property tests: ``ci`` (the default: few examples, derandomized so
every run tries the same inputs, no example database) and ``dev`` (many more examples, random).
Choose with ``HYPOTHESIS_PROFILE=dev pytest tests/properties``. Under mutation testing (mutmut sets
``MUTANT_UNDER_TEST``) ``mutants``: the ``ci`` examples without shrinking, since a mutant is killed
by the first failing example and shrinking it only spends the mutant's CPU limit.

This folder is a package (``__init__.py``), so this file is imported as ``properties.conftest``
and ``from conftest import ...`` in every test module still finds ``tests/conftest.py``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=200, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("mutants", settings.get_profile("ci"), phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "mutants" if os.environ.get("MUTANT_UNDER_TEST") else "ci"))
