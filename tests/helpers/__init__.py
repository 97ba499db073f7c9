"""Shared test helpers (not tests): fakes and harnesses several test packages use."""
