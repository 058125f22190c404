"""The conformance suite: every backend against the primitive table (see conftest.py)."""
