"""Markers of the trainer tests."""

from __future__ import annotations


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "cluster: starts several local processes (multi-process JAX on localhost)")
