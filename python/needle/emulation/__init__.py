"""needle's GPU kernels on the CPU: ``ndl.cuda_emulated()`` and ``ndl.metal_emulated()``.

``cuda/`` compiles the CUDA backend's host table and kernels (``src/cuda``, shipped in the wheel
under ``cuda/src``) with the system C++ compiler against ``cuda_emulation.h``; ``metal/``
compiles the ``.metal`` kernels against an emulated ``<metal_stdlib>``. Each GPU thread runs on
the CPU, so both are slow (docs/emulated_devices.md has timings) and meant for correctness:
they report a kernel's barrier divergence, out-of-bounds accesses, unbound arguments and
missing synchronisation with the kernel, block (threadgroup) and thread.

The built library is cached per hash of its sources, flags and compiler in ``cache_dir()``
(``$NEEDLE_CACHE_DIR``, else ``$XDG_CACHE_HOME/needle``, else ``~/.cache/needle``), so only the
first process builds it; the build time is reported once on stderr.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path


class BuildError(RuntimeError):
    """An emulation could not be built: no compiler, or the sources do not compile."""


class EmulationError(RuntimeError):
    """A kernel misbehaved in an emulation: the message names the kernel, its block or
    threadgroup and thread, and what happened."""


def compiler() -> str:
    """The C++ compiler the emulations are built with: $CXX, else g++."""
    return os.environ.get("CXX", "g++")


def require_compiler(what: str) -> str:
    """compiler(), or a BuildError that says how to pick one."""
    cxx = compiler()
    if shutil.which(cxx) is None:
        source = "$CXX" if "CXX" in os.environ else "the default, g++; set CXX to choose another"
        raise BuildError(
            f"{what} needs a C++17 compiler: {cxx!r} was not found ({source}); install g++ or "
            "clang++"
        )
    return cxx


def cache_dir() -> Path:
    """Where built emulation libraries are kept (created; the temp folder if that fails)."""
    base = os.environ.get("NEEDLE_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "needle")
    try:
        Path(base).mkdir(parents=True, exist_ok=True)
        return Path(base)
    except OSError:
        return Path(tempfile.gettempdir())


def source_hash(cxx: str, flags: Iterable[str], files: Iterable[Path]) -> str:
    """16 hex digits of everything that goes into a build: the compiler's identity, the flags,
    and each file's name and bytes."""
    digest = hashlib.sha256()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    digest.update(version.encode() + b"\0" + " ".join(flags).encode())
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def cached_build(target: Path, build: Callable[[Path], None], what: str) -> Path:
    """`target`, built by build(partial path) unless it exists; the partial file is renamed
    into place atomically, so that processes building at once agree. Reports the build time."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    start = time.perf_counter()
    try:
        build(partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    print(f"needle: built {what} in {seconds:.0f} s (cached: {target})", file=sys.stderr)
    return target


def user_sources(variable: str, shipped: dict[str, Path], suffix: str) -> dict[str, Path]:
    """`shipped` ({file name: path}) with the files of the folder named by the environment
    variable `variable` in place of the shipped ones of the same name. A file there that
    replaces none, or a folder that is missing, is a BuildError."""
    folder = os.environ.get(variable)
    if not folder:
        return dict(shipped)
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise BuildError(f"{variable}={folder}: not a folder")
    mine = {path.name: path.resolve() for path in sorted(root.glob(f"*{suffix}"))}
    unknown = sorted(set(mine) - set(shipped))
    if unknown:
        raise BuildError(
            f"{variable}: {', '.join(unknown)} replace no shipped kernel file (those are "
            f"{', '.join(sorted(shipped))})"
        )
    if not mine:
        raise BuildError(f"{variable}={folder}: no {suffix} files there")
    return {**shipped, **mine}


__all__ = [
    "BuildError",
    "EmulationError",
    "compiler",
    "require_compiler",
    "cache_dir",
    "source_hash",
    "cached_build",
    "user_sources",
]
