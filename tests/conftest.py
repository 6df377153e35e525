"""Shared test settings: hypothesis draws the same examples on every run (CI included)."""

from hypothesis import settings

settings.register_profile("animax", derandomize=True, deadline=None, database=None)
settings.load_profile("animax")
