"""Build and drive the MSL emulation: needle's .metal kernels compiled as C++ and run on the CPU.

``build()`` compiles ``python/needle/backend_ndarray/metal/*.metal`` (the files the Metal
backends compile on a Mac, unchanged) plus this folder's ``selftest.metal`` with g++, against
``msl_emulation.h``, together with ``launcher.cc`` and argument bindings generated from the
kernels' ``[[buffer(n)]]`` / ``[[thread_position_in_grid]]`` ... attributes.

NEEDLE_METAL_KERNELS=folder compiles a user's .metal files there in place of the shipped ones
of the same name. The library is cached (``needle.emulation.cache_dir()``) by a hash of
everything that goes into it.

``EmulatedRuntime`` is a runtime for ``needle.backend_ndarray.metal_primitives``: launches
are queued like a Metal command buffer and run when the backend waits, so a primitive that
reads memory without synchronizing first sees stale data, as on a GPU. Every buffer has
guard bytes on both sides, checked after every launch.

    from metal_emulation.harness import emulated_backend
    nb = emulated_backend()           # a module with the primitive table (primitives.TABLE)
"""

from __future__ import annotations

import ctypes
import mmap
import re
import shutil
import subprocess
import tempfile
import types
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from needle.backend_ndarray import metal_primitives
from needle.emulation import (
    BuildError,
    EmulationError,
    cache_dir,
    cached_build,
    compiler,
    require_compiler,
    source_hash,
    user_sources,
)

HERE = Path(__file__).resolve().parent
KERNEL_DIR = Path(metal_primitives.__file__).resolve().parent / "metal"
TEST_SOURCES = (HERE / "selftest.metal",)
# The compiler the suite's specs check for (the build reads $CXX when it runs).
CXX = compiler()
CXXFLAGS = [
    "-std=c++17",
    "-O2",
    "-fPIC",
    "-pthread",
    "-Wall",
    "-Wextra",
    "-Werror",
    # [[buffer(0)]] and friends mean nothing to g++; the bindings below read them instead.
    "-Wno-attributes",
    "-Wno-unused-parameter",
]

# Attributes that deliver a uint / uint2 / uint3 (all of one kernel's must share one type)
# and those that are always scalar.
VECTOR_POSITIONS = {
    "thread_position_in_grid",
    "threadgroup_position_in_grid",
    "thread_position_in_threadgroup",
    "threads_per_threadgroup",
    "threadgroups_per_grid",
    "threads_per_grid",
}
SCALAR_POSITIONS = {
    "thread_index_in_threadgroup",
    "simdgroup_index_in_threadgroup",
    "thread_index_in_simdgroup",
    "threads_per_simdgroup",
    "simdgroups_per_threadgroup",
}


class LaunchError(EmulationError):
    """A launch the emulation refused or a kernel that misbehaved (EmulationError's message)."""


# ---- sources and bindings -------------------------------------------------------------------
def kernel_files() -> list[Path]:
    """Every .metal file in the order of one translation unit, common.metal first: the
    shipped ones, or a user's in their place (NEEDLE_METAL_KERNELS), and the self-tests."""
    names = list(dict.fromkeys(metal_primitives.CORE_SOURCES + metal_primitives.SIMDGROUP_SOURCES))
    sources = user_sources("NEEDLE_METAL_KERNELS", {n: KERNEL_DIR / n for n in names}, ".metal")
    return list(sources.values()) + list(TEST_SOURCES)


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


_KERNEL = re.compile(
    r"(?P<template>\btemplate\s*<[^<>]*>\s*)?"
    r"(?:\bkernel|\[\[\s*kernel\s*\]\])\s+void\s+(?P<name>\w+)\s*\("
)
# template [[host_name("ewise_neg")]] [[kernel]] decltype(ewise_unary<neg_op>) ...: one
# instantiation of a kernel template, under the name the host asks for.
_INSTANCE = re.compile(
    r"\btemplate\s*\[\[\s*host_name\s*\(\s*(?P<host>(?:\"\w*\"\s*)+)\)\s*\]\]"
    r"\s*(?:\bkernel|\[\[\s*kernel\s*\]\])\s*decltype\s*\(\s*"
    r"(?P<callee>(?P<template>\w+)\s*<[^()]*>)\s*\)"
)
_PARAM = re.compile(
    r"^(?P<type>.*?)\s*\b(?P<name>\w+)\s*(?:\[\[\s*(?P<attr>\w+)\s*"
    r"(?:\(\s*(?P<arg>\d+)\s*\))?\s*\]\])?$",
    re.S,
)


def parse_kernels(source: str) -> list[tuple[str, list[tuple[str, str, str, int | None]], str]]:
    """(name, [(type, name, attribute, buffer index)], callee) of every kernel in preprocessed
    MSL: plain kernels (callee = name) and the [[host_name]] instantiations of kernel
    templates (callee = template<arguments>); the templates themselves are no kernels."""
    kernels, templates = [], {}
    for match in _KERNEL.finditer(source):
        depth, i = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(source[i], 0)
            i += 1
        name = match.group("name")
        params = []
        for param in _split_top_level(source[match.end() : i - 1]):
            m = _PARAM.match(" ".join(param.split()))
            if not m or not m.group("attr"):
                raise BuildError(f"kernel {name}: cannot bind parameter {param!r}")
            arg = m.group("arg")
            params.append(
                (
                    m.group("type"),
                    m.group("name"),
                    m.group("attr"),
                    int(arg) if arg is not None else None,
                )
            )
        if match.group("template"):
            templates[name] = params
        else:
            kernels.append((name, params, name))
    for match in _INSTANCE.finditer(source):
        host = "".join(re.findall(r'"(\w*)"', match.group("host")))
        if match.group("template") not in templates:
            raise BuildError(f"{host}: {match.group('template')} is not a kernel template")
        kernels.append(
            (host, templates[match.group("template")], " ".join(match.group("callee").split()))
        )
    return kernels


def generate_bindings(kernels) -> str:
    """C++ that calls each kernel with its arguments taken from the launcher's buffer table and
    thread position, and a table describing the kernels to the launcher."""
    out = ["\n// ---- generated by tests/metal_emulation/harness.py ----", "#include <type_traits>"]
    entries = []
    for name, params, callee in kernels:
        specs, args = [], []
        vector_types = set()
        # Each argument's type is the kernel's own (a template's `device const T*` is one
        # type per instantiation), read from its function pointer: msl::kernel_arg_t.
        kernel_type = f"decltype(&{callee})"
        for k, (type_, pname, attr, index) in enumerate(params):
            declared = f"msl::kernel_arg_t<{kernel_type}, {k}>"
            if attr == "buffer":
                if type_.endswith("*"):
                    specs.append(
                        f'{{{index}, false, sizeof(std::remove_pointer_t<{declared}>), "{pname}"}}'
                    )
                    args.append(f"reinterpret_cast<{declared}>(buffers[{index}])")
                elif type_.endswith("&"):
                    base = f"std::remove_reference_t<{declared}>"
                    specs.append(f'{{{index}, true, sizeof({base}), "{pname}"}}')
                    args.append(f"*reinterpret_cast<{base}*>(buffers[{index}])")
                else:
                    raise BuildError(
                        f"kernel {name}: buffer argument {pname} must be a pointer or a reference"
                    )
            elif attr in VECTOR_POSITIONS:
                vector_types.add(type_)
                args.append(f"msl::position_as<{declared}>(position.{attr})")
            elif attr in SCALAR_POSITIONS:
                args.append(f"static_cast<{declared}>(position.{attr})")
            else:
                raise BuildError(f"kernel {name}: attribute [[{attr}]] is not emulated")
        if len(vector_types) > 1:
            # Metal rejects kernels whose position arguments mix uint, uint2 and uint3.
            raise BuildError(
                f"kernel {name}: position arguments of different types {sorted(vector_types)}"
            )
        if len({s.split(",")[0] for s in specs}) != len(specs):
            raise BuildError(f"kernel {name}: two arguments at one [[buffer(n)]] index")
        spec_list = ", ".join(specs) if specs else ""
        out.append(
            f"static const msl::ArgSpec args_{name}[] = {{{spec_list}}};"
            if specs
            else f"static const msl::ArgSpec* const args_{name} = nullptr;"
        )
        out.append(
            f"static void call_{name}(void* const* buffers, const msl::ThreadPosition& position) {{"
        )
        out.append(f"  (void)buffers; (void)position;\n  {callee}({', '.join(args)});\n}}")
        entries.append(f'{{"{name}", call_{name}, args_{name}, {len(specs)}}}')
    out.append(
        'extern "C" const msl::KernelEntry msl_kernel_table[] = {\n  '
        + ",\n  ".join(entries)
        + "\n};"
    )
    out.append(f'extern "C" const int msl_kernel_count = {len(entries)};')
    return "\n".join(out) + "\n"


def kernels_in(source: str) -> list[str]:
    """The names of the kernels that one MSL source string (a whole library) defines."""
    with tempfile.TemporaryDirectory(prefix="needle-msl-parse-") as tmp:
        work = Path(tmp)
        for header in ("metal_stdlib", "metal_simdgroup_matrix"):
            (work / header).write_text("")
        (work / "library.metal").write_text(source)
        preprocessed = _run(
            [compiler(), "-E", "-P", "-x", "c++", "-std=c++17", f"-I{work}", "library.metal"],
            work,
        )
    return [name for name, _, _ in parse_kernels(preprocessed)]


def _run(cmd: Sequence[str], cwd: Path) -> str:
    result = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        # The first line says what failed in one line (a device's reason); the rest is the log.
        first = next((line for line in result.stderr.splitlines() if "error" in line), "")
        raise BuildError(f"{Path(cmd[0]).name} failed: {first}\n{' '.join(cmd)}\n{result.stderr}")
    return result.stdout


def _source_hash(cxx: str) -> str:
    support = ("msl_emulation.h", "metal_stdlib", "metal_simdgroup_matrix", "launcher.cc")
    files = [HERE / name for name in support] + [Path(__file__).resolve()] + kernel_files()
    return source_hash(cxx, CXXFLAGS, files)


def build(cache: Path | None = None) -> Path:
    """The emulation library (built unless a build of the same sources is cached)."""
    cxx = require_compiler("the MSL emulation")
    directory = Path(cache or cache_dir()) / f"needle-msl-emulation-{_source_hash(cxx)}"
    target = directory / "libmsl_emulation.so"
    return cached_build(target, lambda partial: _build(cxx, partial), "the MSL emulation")


def _build(cxx: str, partial: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="needle-msl-build-", dir=partial.parent))
    try:
        # Kernel signatures are read after the preprocessor has expanded the kernels' macros,
        # with the address-space words intact (the stub <metal_stdlib> defines nothing).
        stub = work / "stub"
        stub.mkdir()
        for header in ("metal_stdlib", "metal_simdgroup_matrix"):
            (stub / header).write_text("")
        includes = "".join(f'#include "{path}"\n' for path in kernel_files())
        (work / "all.metal").write_text(includes)
        preprocessed = _run(
            [cxx, "-E", "-P", "-x", "c++", "-std=c++17", f"-I{stub}", "all.metal"], work
        )
        kernels = parse_kernels(preprocessed)
        (work / "kernels.cc").write_text(
            '#include "msl_emulation.h"\n' + includes + generate_bindings(kernels)
        )
        compile_flags = CXXFLAGS + [f"-I{HERE}", "-c"]
        with ThreadPoolExecutor(2) as pool:  # the two translation units in parallel
            jobs = [
                pool.submit(_run, [cxx, *compile_flags, str(src), "-o", obj], work)
                for src, obj in (
                    (work / "kernels.cc", "kernels.o"),
                    (HERE / "launcher.cc", "launcher.o"),
                )
            ]
            for job in jobs:
                job.result()
        _run([cxx, "-shared", "-pthread", "kernels.o", "launcher.o", "-o", str(partial)], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---- address spaces ---------------------------------------------------------------------------
CLANG_FLAGS = [
    "-x",
    "c++",
    "-std=c++17",
    "-fsyntax-only",
    "-DMSL_CHECK_ADDRESS_SPACES",
    "-Wno-unknown-attributes",
]


_INSTANCE_ATTRIBUTES = re.compile(
    r"\btemplate\s*\[\[\s*host_name\s*\([^)]*\)\s*\]\]\s*\[\[\s*kernel\s*\]\]"
)


def check_address_spaces() -> str | None:
    """Compile the product kernels with Metal's address spaces as clang address spaces (which
    g++ has not); returns clang's errors ("" when there are none), or None without clang (a
    clang++ executable, or the Python bindings of the libclang wheel)."""
    with tempfile.TemporaryDirectory(prefix="needle-msl-spaces-") as tmp:
        work = Path(tmp)
        for header in ("metal_stdlib", "metal_simdgroup_matrix"):
            (work / header).write_text('#include "msl_emulation.h"\n')
        # Metal's explicit instantiations carry attributes (template [[host_name("x")]]
        # [[kernel]] decltype(f<T>) f<T>;) where C++ allows none; clang rejects the form that
        # Metal requires, so the copies checked here are plain C++ instantiations.
        source = work / "kernels.cc"
        includes = []
        for path in (f for f in kernel_files() if f not in TEST_SOURCES):
            copy = work / path.name
            copy.write_text(
                f'#line 1 "{path}"\n' + _INSTANCE_ATTRIBUTES.sub("template", path.read_text())
            )
            includes.append(f'#include "{copy}"\n')
        source.write_text('#include "msl_emulation.h"\n' + "".join(includes))
        args = CLANG_FLAGS + [f"-I{HERE}", f"-I{work}"]
        clang = next(
            (
                shutil.which(name)
                for name in ["clang++"] + [f"clang++-{v}" for v in range(20, 13, -1)]
                if shutil.which(name)
            ),
            None,
        )
        if clang:
            result = subprocess.run([clang, *args, str(source)], capture_output=True, text=True)
            return "\n".join(line for line in result.stderr.splitlines() if "error" in line)
        # The wheel has no compiler headers of its own (float.h, stddef.h): borrow g++'s.
        gcc_include = subprocess.run(
            [compiler(), "-print-file-name=include"], capture_output=True, text=True
        ).stdout.strip()
        try:
            from clang import cindex

            unit = cindex.Index.create().parse(str(source), args=args + ["-isystem", gcc_include])
        except Exception:  # no bindings, or no libclang library for them
            return None
        return "\n".join(str(d) for d in unit.diagnostics if d.severity >= cindex.Diagnostic.Error)


# ---- the library ------------------------------------------------------------------------------
class Library:
    """The built emulation: launch a kernel by name over a grid."""

    MAX_BUFFERS = 31

    def __init__(self, path: Path | None = None):
        self.path = path or build()
        self._lib = ctypes.CDLL(str(self.path))
        self._lib.msl_launch.restype = ctypes.c_int
        self._lib.msl_launch.argtypes = [
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_size_t),
            ctypes.POINTER(ctypes.c_uint),
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        names = ctypes.create_string_buffer(1 << 16)
        self._lib.msl_kernel_names(names, len(names))
        self.kernels = tuple(names.value.decode().split())

    def launch(
        self,
        kernel: str,
        bindings: dict[int, tuple[int, int]],
        threadgroups: Sequence[int],
        threads: Sequence[int],
    ) -> None:
        """Run `kernel`; bindings maps [[buffer(n)]] to (address, length in bytes)."""
        buffers = (ctypes.c_void_p * self.MAX_BUFFERS)()
        lengths = (ctypes.c_size_t * self.MAX_BUFFERS)()
        for index, (address, length) in bindings.items():
            buffers[index], lengths[index] = address, length
        error = ctypes.create_string_buffer(4096)
        status = self._lib.msl_launch(
            kernel.encode(),
            buffers,
            lengths,
            (ctypes.c_uint * 3)(*threadgroups),
            (ctypes.c_uint * 3)(*threads),
            error,
            len(error),
        )
        if status:
            raise LaunchError(error.value.decode())


_library: Library | None = None


def library() -> Library:
    global _library
    if _library is None:
        _library = Library()
    return _library


def library_or_skip() -> Library:
    """The library; in a test where it does not build, a skip with the build error."""
    try:
        return library()
    except BuildError as error:
        import pytest

        pytest.skip(f"the MSL emulation does not build here: {error}")


# ---- the runtime -------------------------------------------------------------------------
GUARD = 64  # bytes at least before every buffer, set to 0xFF (a NaN pattern) and checked
_PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


class EmulatedBuffer:
    """Host memory standing in for a shared-storage MTLBuffer: an inaccessible page right after
    its last byte (a kernel's access past the end faults, and the launcher names the thread)
    and one before the GUARD bytes and slack that precede it (checked after each launch). So
    its start is aligned only as its size is (an MTLBuffer is page-aligned)."""

    def __init__(self, nbytes: int):
        self.nbytes = nbytes
        data_pages = -(-(nbytes + GUARD) // _PAGE)
        self._map = mmap.mmap(-1, (data_pages + 2) * _PAGE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        for page in (base, base + (data_pages + 1) * _PAGE):
            if _libc.mprotect(page, _PAGE, 0) != 0:  # PROT_NONE
                raise OSError(ctypes.get_errno(), "mprotect failed for an emulated buffer")
        self.raw = np.frombuffer(self._map, np.uint8, data_pages * _PAGE, _PAGE)
        self.raw[:] = 0xFF  # guards, and NaN-ish garbage as uninitialised GPU memory
        self.start = data_pages * _PAGE - nbytes

    @property
    def address(self) -> int:
        return self.raw.ctypes.data + self.start

    def guards_intact(self) -> bool:
        return bool((self.raw[: self.start] == 0xFF).all())


class EmulatedRuntime:
    """A metal_primitives runtime whose GPU is the emulation library."""

    def __init__(
        self,
        lib: Library | None = None,
        matmul_kernels: Sequence[str] = ("matmul_simdgroup", "matmul_threadgroup"),
    ):
        self.lib = lib or library()
        self._matmul_kernels = tuple(matmul_kernels)
        self._pending: list[tuple] = []
        self.batch, self.completed = 0, -1
        self.launches = 0  # kernels run so far, for tests

    def allocate(self, nbytes: int) -> EmulatedBuffer:
        return EmulatedBuffer(nbytes)

    def host_view(self, buffer: EmulatedBuffer, nbytes: int) -> memoryview:
        # Shared memory is only the CPU's once every kernel encoded to use it has run: a
        # host that reads or writes it earlier gets stale data on a GPU, at random.
        for kernel, buffers, *_ in self._pending:
            if any(bound is buffer for _, bound, _ in buffers):
                raise LaunchError(
                    f"missing synchronisation: the host reads or writes a buffer that kernel "
                    f"{kernel} uses, encoded but not yet run: wait for the command buffer first"
                )
        return memoryview(buffer.raw[buffer.start : buffer.start + nbytes])

    def address(self, buffer: EmulatedBuffer) -> int:
        return buffer.address

    def matmul_kernels(self) -> tuple[str, ...]:
        return self._matmul_kernels

    def dispatch(self, kernel, buffers, constants, threadgroups, threads) -> None:
        # Constants are copied now, as setBytes copies them into the command buffer.
        self._pending.append(
            (
                kernel,
                tuple(buffers),
                [(i, bytes(c)) for i, c in constants],
                tuple(threadgroups),
                tuple(threads),
            )
        )

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        for kernel, buffers, constants, threadgroups, threads in pending:
            keep_alive = []
            bindings = {}
            for index, buffer, offset in buffers:
                if not 0 <= offset <= buffer.nbytes:
                    raise LaunchError(
                        f"{kernel}: offset {offset} outside a buffer of {buffer.nbytes} bytes"
                    )
                bindings[index] = (buffer.address + offset, buffer.nbytes - offset)
            for index, data in constants:
                if index in bindings:
                    raise LaunchError(f"{kernel}: [[buffer({index})]] bound twice")
                if not 0 < len(data) <= 4096:
                    raise LaunchError(f"{kernel}: setBytes takes 1 to 4096 bytes, got {len(data)}")
                block = ctypes.create_string_buffer(data, len(data))
                keep_alive.append(block)
                bindings[index] = (ctypes.addressof(block), len(data))
            self.lib.launch(kernel, bindings, threadgroups, threads)
            self.launches += 1
            for index, buffer, _ in buffers:
                if not buffer.guards_intact():
                    raise LaunchError(
                        f"kernel {kernel}: out-of-bounds write before the start of the buffer "
                        f"bound at [[buffer({index})]] (found in its guard bytes after the "
                        "launch: which thread wrote it is not known)"
                    )


def emulated_backend(name: str = "metal_emulated", **runtime_options) -> types.ModuleType:
    """A module with the primitive table (primitives.TABLE), running the MSL kernels in
    the emulation. Its `backend` attribute is the MetalBackend (to pick a matmul kernel)."""
    backend = metal_primitives.MetalBackend(EmulatedRuntime(**runtime_options), name)
    module = types.ModuleType(f"ndarray_backend_{name}")
    module.__dict__.update(backend.primitive_table())
    module.backend = backend
    return module
