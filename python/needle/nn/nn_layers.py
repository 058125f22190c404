"""Issue 16: the layers people reach for in the first hour (PyTorch names and conventions)."""

from __future__ import annotations

__all__: list[str] = []
