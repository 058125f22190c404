"""Issue 16: activation ops people reach for in the first hour (PyTorch's names and conventions)."""

from __future__ import annotations

__all__: list[str] = []
