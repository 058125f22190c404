"""The benchmark harness shared by `needle bench` and the scripts in benchmarks/.

- Timing: warm-up calls, then repeats, each a block of calls long enough to outlast the
  clock's and the scheduler's noise, the device synchronised before the clock stops; the
  libraries' repeats interleave in a rotating order, in rounds until each median's 95%
  confidence interval is within ±5% or a time cap (wider: an unreliable row); the median counts.
- Threads: every library gets the same count: needle and PyTorch through set_num_threads,
  the BLAS libraries through their environment variables, which they read once, when they
  load, so a process is re-run with them set (run_pinned).
- Backends: a library on a device (needle's cpu, PyTorch's cuda, NumPy, or a script's own
  variant such as needle's raw backend primitive), and the workloads and cases they run.
- The machine: CPU model, cores, GPUs, threads, versions, commit and load average.

A script in benchmarks/ is a configuration of it: it declares its workloads and backends and
hands itself to script_main(), which adds the common options (--threads, --repeats, --plot,
--write), measures each thread count in its own pinned process and prints Markdown tables:

    def configure(args):
        workload = matmul_workload([256, 1024], [], repeats=5, warmup=2, min_time=0.2)
        return [workload], [numpy_backend(), needle_backend("cpu"), torch_backend("cpu")]

    if __name__ == "__main__":
        sys.exit(script_main(sys.modules[__name__], ratios=[("needle cpu", "torch cpu")]))
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import needle as ndl

# Thread counts of the BLAS libraries are read once, when the library loads, so they are set in
# the environment of a fresh process (see run()). NEEDLE_NUM_THREADS is the C++ backend's default.
THREAD_ENV = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NEEDLE_NUM_THREADS",
)

TORCH_DEVICES = ("cpu", "cuda", "mps")
# needle device -> the PyTorch device that runs on the same hardware.
TORCH_COUNTERPART = {"cpu": "cpu", "cpu_numpy": "cpu", "cuda": "cuda", "metal": "mps", "mps": "mps"}


# ---- threads ---------------------------------------------------------------------------
def thread_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default os.environ) with every library's thread variable set to `threads`."""
    env = dict(os.environ if base is None else base)
    env.update({name: str(threads) for name in THREAD_ENV})
    return env


def threads_pinned(threads: int) -> bool:
    """True when this process started with every thread variable at `threads`."""
    return all(os.environ.get(name) == str(threads) for name in THREAD_ENV)


def set_threads(threads: int) -> dict[str, Any]:
    """Give needle's C++ backend and PyTorch `threads` threads; return what each now uses."""
    used: dict[str, Any] = {"requested": threads}
    try:
        ndl.set_num_threads(threads)
        used["needle"] = ndl.get_num_threads()
    except (AttributeError, RuntimeError):  # a C++ build without a thread pool
        used["needle"] = "fixed by the build"
    torch = import_torch()
    if torch is not None:
        torch.set_num_threads(threads)
        used["torch"] = torch.get_num_threads()
    used["blas_env"] = {name: os.environ.get(name) for name in THREAD_ENV}
    return used


def import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def cores_for(threads: int) -> list[int] | None:
    """The cores a run of `threads` threads is held to: the last `threads` of those this
    process may use (core 0 takes most interrupts), or None where that cannot be set (not
    Linux) or would hold nothing back. Left free, the scheduler moved a one-thread step
    between this machine's 2 cores, each move costing the L2 it had warmed: ResNet-9's bf16
    convs took 6.9-9.5 ms per batch of 128 from one process to the next, 6.7-6.9 ms held."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[-threads:] if 0 < threads < len(allowed) else None


def run_pinned(threads: int, command: Sequence[str]) -> int:
    """Run `command` in a fresh process whose environment gives every library `threads`
    threads, held to cores_for(threads); its exit status (130 after Ctrl-C, which the child
    got too)."""
    cores = cores_for(threads)
    hold = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    try:
        return subprocess.run(list(command), env=thread_env(threads), preexec_fn=hold).returncode
    except KeyboardInterrupt:
        return 130


# ---- timing ----------------------------------------------------------------------------
@dataclass
class Timing:
    """Seconds per call, one entry per repeat (each the mean of `calls_per_repeat` calls)."""

    times: list[float]
    calls_per_repeat: int

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """Interquartile range of the repeats, relative to the median."""
        q1, q3 = np.percentile(self.times, [25, 75])
        return float((q3 - q1) / self.median) if self.median > 0 else 0.0


# A row is reliable when its median's 95% confidence interval is within ±5% of it: tighter
# than the 10-20% that quick runs on a shared machine differed by between runs (README).
CI_TARGET = 0.05


def median_ci(times: Sequence[float]) -> float | None:
    """The larger half of a 95% confidence interval for the median of `times`, relative to the
    median (0.05: ±5%); None under 6 repeats, where no such interval exists. Distribution-free
    (timings are skewed, often bimodal): the j-th smallest and largest repeats, j the largest
    rank with at most 2.5% on each side, from the binomial(n, 1/2) count of repeats below the
    median, exact (n is 5-50 here, too few for the normal approximation). 5 repeats' range
    misses the median 2/32 = 6.25% of the time."""
    ordered, n = sorted(times), len(times)
    j, below = 0, 0  # below: 2**n P(fewer than j + 1 repeats under the median)
    while j < n // 2:
        below += math.comb(n, j)
        if 40 * below > 2**n:  # P > 2.5%, in integers (2**n overflows a float past n = 1023)
            break
        j += 1
    median = statistics.median(ordered) if n else 0.0
    if not j or median <= 0:
        return None
    return max(median - ordered[j - 1], ordered[n - j] - median) / median


def reliable(ci: float | None) -> bool:
    return ci is not None and ci <= CI_TARGET


def speed_ratio(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, bool]:
    """a's speed relative to b's (b's time over a's) and whether that is reliable. Rows of one
    case, whose repeats were taken in the same rounds, give the median of the per-round ratios,
    reliable when its 95% interval is within ±5%: a phase in which the machine runs slower
    slows both blocks of a round, and drops out of their ratio (on this VM, with such phases,
    training-step medians stayed ±10-30% wide: benchmarks/RESULTS.md, 2026-12-04). Other
    rows: the ratio of medians, reliable when both medians are."""
    times_a, times_b = a.get("times_s") or [], b.get("times_s") or []
    if times_a and len(times_a) == len(times_b):
        per_round = [tb / ta for ta, tb in zip(times_a, times_b)]
        return statistics.median(per_round), reliable(median_ci(per_round))
    return b["median_s"] / a["median_s"], bool(a.get("reliable") and b.get("reliable"))


def warm_up(
    fn: Callable[[], object],
    synchronize: Callable[[], None] = lambda: None,
    *,
    warmup: int = 1,
    min_time: float = 0.05,
) -> int:
    """Call `fn` `warmup` times plus once more to time it; return how many calls make a block
    of about `min_time` seconds (as timeit's autorange: long enough to outlast the timer's and
    the scheduler's noise)."""
    for _ in range(warmup):
        fn()
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    once = time.perf_counter() - start
    return max(1, min(100_000, int(min_time / max(once, 1e-9))))


def time_block(
    fn: Callable[[], object],
    synchronize: Callable[[], None],
    number: int,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Seconds per call over `number` calls, the device synchronised before the clock stops
    (GPU work is asynchronous)."""
    start = clock()
    for _ in range(number):
        fn()
    synchronize()
    return (clock() - start) / number


def measure(
    fn: Callable[[], object],
    synchronize: Callable[[], None] = lambda: None,
    *,
    repeats: int = 5,
    warmup: int = 1,
    min_time: float = 0.05,
) -> Timing:
    """Time `fn` after `warmup` calls: `repeats` blocks of calls, each about `min_time` s."""
    number = warm_up(fn, synchronize, warmup=warmup, min_time=min_time)
    return Timing([time_block(fn, synchronize, number) for _ in range(max(1, repeats))], number)


# ---- backends --------------------------------------------------------------------------
@dataclass
class Backend:
    """A library on a device: needle's `cpu`, PyTorch's `cuda`, ... and whether it can run."""

    library: str  # "needle", "torch" or "numpy"
    device: str
    available: bool = True
    reason: str = ""  # why it is not available
    handle: Any = None  # the needle BackendDevice or the torch.device
    label: str | None = None  # the name, when not "library device" (a script's variants)

    @property
    def name(self) -> str:
        return self.label or f"{self.library} {self.device}"

    @property
    def hardware(self) -> str:
        """The PyTorch device name of the hardware this backend runs on."""
        return (
            TORCH_COUNTERPART.get(self.device, self.device)
            if self.library == "needle"
            else self.device
        )

    def synchronize(self) -> None:
        if not self.available:
            return
        if self.library == "needle":
            sync = getattr(self.handle.mod, "synchronize", None)
            if sync is not None:
                sync()
        elif self.device == "cuda":
            import_torch().cuda.synchronize()
        elif self.device == "mps":
            import_torch().mps.synchronize()


def needle_backend(name: str, label: str | None = None) -> Backend:
    """needle's device `name` (cpu, cuda, cpu_numpy, ...), available or with the reason."""
    devices = {d.name: d for d in ndl.all_devices()}
    if name not in devices:
        return Backend(
            "needle",
            name,
            False,
            f"no such needle device (needle has {', '.join(devices)})",
            label=label,
        )
    device = devices[name]
    if not device.enabled():
        reason = " ".join(str(device.reason).split())
        return Backend("needle", name, False, f"not available: {reason}", device, label)
    adapter = webgpu_adapter(device)
    if adapter is not None:
        # The adapter in the name: a row of Mesa's lavapipe (a CPU) never reads as a GPU's.
        label = f"{label or f'needle {name}'} ({adapter})"
    return Backend("needle", name, True, "", device, label)


def webgpu_adapter(device) -> str | None:
    """The adapter an enabled needle webgpu device runs on ("llvmpipe (...) (Vulkan, CPU)"),
    None for other devices."""
    capabilities = getattr(device.mod, "capabilities", None) if device.name == "webgpu" else None
    return str(capabilities()["adapter"]) if capabilities is not None else None


def torch_backend(name: str, label: str | None = None) -> Backend:
    """PyTorch's device `name` (cpu, cuda, mps), available or with the reason."""
    torch = import_torch()
    if torch is None:
        return Backend("torch", name, False, "not installed", label=label)
    if name == "cuda" and not torch.cuda.is_available():
        return Backend(
            "torch", name, False, "not available (torch.cuda.is_available() is False)", label=label
        )
    mps = getattr(torch.backends, "mps", None)
    if name == "mps" and not (mps is not None and mps.is_available()):
        return Backend("torch", name, False, "not available (torch.backends.mps)", label=label)
    return Backend("torch", name, True, "", torch.device(name), label)


def numpy_backend() -> Backend:
    """NumPy (its BLAS for matmul) on the CPU."""
    return Backend("numpy", "cpu", label="numpy")


def discover_backends(spec: str | None = None) -> list[Backend]:
    """The backends named by `spec` ("cpu,cuda", "needle:cpu_numpy", "torch:mps"; a bare name
    means needle's device of that name and PyTorch's), or by default every enabled needle
    device, PyTorch's cpu (reported as missing when torch is not installed) and every other
    PyTorch device present."""
    if spec is None:
        backends = [needle_backend(d.name) for d in ndl.all_devices() if d.enabled()]
        backends.append(torch_backend("cpu"))
        for name in TORCH_DEVICES[1:]:
            candidate = torch_backend(name)
            if candidate.available:
                backends.append(candidate)
        return backends
    needle_names = {d.name for d in ndl.all_devices()}
    backends: list[Backend] = []
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        library, _, name = token.rpartition(":")
        if library not in ("", "needle", "torch"):
            raise ValueError(f"--devices: {token!r}: the library must be needle or torch")
        if library == "needle" or (
            not library and (name in needle_names or name not in TORCH_DEVICES)
        ):
            backends.append(needle_backend(name))
        if library == "torch" or (not library and name in TORCH_DEVICES):
            if library == "torch" and name not in TORCH_DEVICES:
                raise ValueError(
                    f"--devices: {token!r}: torch devices are {', '.join(TORCH_DEVICES)}"
                )
            backends.append(torch_backend(name))
    unique = {b.name: b for b in backends}
    return list(unique.values())


def unlisted_devices(backends: list[Backend]) -> list[dict[str, str]]:
    """needle's devices that `backends` leaves out because they are not available here, with
    the reason, so that a report says what it did not measure."""
    listed = {b.name for b in backends}
    return [
        {"name": f"needle {d.name}", "reason": needle_backend(d.name).reason}
        for d in ndl.all_devices()
        if not d.enabled() and f"needle {d.name}" not in listed
    ]


# ---- workloads -------------------------------------------------------------------------
@dataclass
class Case:
    """One row of a workload's table: `build(backend)` returns the function to time."""

    name: str
    build: Callable[[Backend], Callable[[], object]]
    params: dict[str, Any] = field(default_factory=dict)
    work: float | None = None  # FLOPs, bytes or images per call, for throughput workloads
    headline: bool = False  # also shown in the report's summary


@dataclass
class Workload:
    key: str
    title: str
    unit: str  # "GFLOP/s", "GB/s", "images/s", "us" or "ms"
    note: str
    cases: list[Case]
    repeats: int  # the least; rounds go on until the rows are reliable or max_time has passed
    warmup: int
    min_time: float
    max_time: float = 10.0  # seconds of rounds per case, after `repeats` of them

    @property
    def throughput(self) -> bool:
        return self.unit in ("GFLOP/s", "GB/s", "images/s")

    def value(self, seconds: float, case: Case) -> float:
        """The table's number for a call of `seconds`."""
        if self.throughput:
            return case.work / seconds / (1.0 if self.unit == "images/s" else 1e9)
        return seconds * {"us": 1e6, "ms": 1e3, "s": 1.0}[self.unit]


def arrays(backend: Backend, *shapes: tuple[int, ...]):
    """Standard-normal float32 arrays of `shapes` on the backend (seeded, so every backend
    gets the same numbers): NDArrays, torch tensors or NumPy arrays."""
    rng = np.random.default_rng(0)
    data = [rng.standard_normal(shape, dtype=np.float32) for shape in shapes]
    if backend.library == "needle":
        return [ndl.NDArray(a, device=backend.handle) for a in data]
    if backend.library == "numpy":
        return data
    torch = import_torch()
    return [torch.from_numpy(a).to(backend.handle) for a in data]


# ---- running ---------------------------------------------------------------------------
def _error(error: Exception) -> dict[str, Any]:
    return {"status": "error", "reason": f"{type(error).__name__}: {error}"[:300]}


def run_case(
    workload: Workload,
    case: Case,
    backends: list[Backend],
    pause: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, dict[str, Any]]:
    """One case on every backend: backend name -> a JSON-ready row. A backend that cannot run
    it gets a status and a reason instead of timings.

    Each backend warms up; then rounds of one block per backend, in an order that rotates so
    that a change in the machine's load (other processes, clock speed) hits every library alike,
    each block after an untimed call: `workload.repeats` rounds, then more until every median_ci
    is within ±CI_TARGET or `workload.max_time` s have passed (else: unreliable), on `clock`."""
    rows: dict[str, dict[str, Any]] = {}
    running: dict[str, tuple[Backend, Callable[[], object], int]] = {}
    for backend in backends:
        if not backend.available:
            rows[backend.name] = {"status": "unavailable", "reason": backend.reason}
            continue
        try:  # report a failure in the table rather than stop the whole run
            fn = case.build(backend)  # once: every round reuses the backend's arrays and model
            number = warm_up(
                fn, backend.synchronize, warmup=workload.warmup, min_time=workload.min_time
            )
            running[backend.name] = (backend, fn, number)
        except Exception as error:
            rows[backend.name] = _error(error)
    times: dict[str, list[float]] = {name: [] for name in running}
    start = clock()
    for round_ in itertools.count():
        names = list(running)
        settled = all(reliable(median_ci(times[n])) for n in names)
        if not names or (
            round_ >= max(1, workload.repeats) and (settled or clock() - start >= workload.max_time)
        ):
            break
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            backend, fn, number = running[name]
            if pause and len(running) > 1:
                # BLAS and OpenMP workers spin for a while after a call (OpenBLAS about 0.1 s);
                # on a small machine they would take the cores of the next library.
                time.sleep(pause)
            try:
                # One untimed call first: the previous library left the caches, the TLB and
                # the allocator's free lists in its own state, and a training loop runs one
                # library continuously (this halved the needle cpu ResNet-9 step after a
                # NumPy-backend step).
                fn()
                times[name].append(time_block(fn, backend.synchronize, number, clock))
            except Exception as error:
                rows[name] = _error(error)
                del running[name]
    for name, (_, _, number) in running.items():
        timing = Timing(times[name], number)
        ci = median_ci(timing.times)
        rows[name] = {
            "status": "ok",
            "times_s": timing.times,
            "calls_per_repeat": number,
            "median_s": timing.median,
            "spread": timing.spread,
            "ci": ci,  # median_ci: the 95% interval's larger half, relative; None under 6
            "reliable": reliable(ci),
            "value": workload.value(timing.median, case),
        }
    return {b.name: rows[b.name] for b in backends}


def _add_ratios(rows: dict[str, dict[str, Any]], backends: list[Backend]) -> None:
    """Speed relative to PyTorch on the same hardware and to needle's cpu backend (a ratio of
    median times: 0.86 = 86% of PyTorch's speed, 22.0 = 22x needle cpu's speed)."""

    def measured(name: str) -> dict[str, Any] | None:
        row = rows.get(name, {})
        return row if row.get("status") == "ok" else None

    cpu = measured("needle cpu")
    for backend in backends:
        row = rows[backend.name]
        if row["status"] != "ok":
            continue
        torch = measured(f"torch {backend.hardware}") if backend.library == "needle" else None
        for key, other in (("speed_vs_torch", torch), ("speed_vs_needle_cpu", cpu)):
            ratio, steady = speed_ratio(row, other) if other else (None, False)
            row[key], row[key + "_reliable"] = ratio, steady


class OtherLoad:
    """Cores used by other processes while a block of code ran (Linux; NaN elsewhere).

    Machine-wide busy time from /proc/stat minus this process's CPU time, over wall time: on
    a shared machine it tells which rows of a table were measured with company.
    """

    def __enter__(self) -> OtherLoad:
        self._start = (self._machine_busy(), self._own_cpu(), time.perf_counter())
        return self

    def __exit__(self, *exc) -> None:
        busy, own, wall = self._machine_busy(), self._own_cpu(), time.perf_counter()
        b0, o0, w0 = self._start
        self.cores = max(0.0, (busy - b0) - (own - o0)) / (wall - w0)

    @staticmethod
    def _machine_busy() -> float:
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:9]]
        except OSError:
            return float("nan")
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait

    @staticmethod
    def _own_cpu() -> float:
        t = os.times()
        return t.user + t.system


def run_benchmarks(
    workloads: list[Workload],
    backends: list[Backend],
    *,
    pause: float = 0.1,
    progress: bool = True,
    description: str = "needle bench",
) -> list[dict[str, Any]]:
    """Every case of every workload on every backend, with a progress bar; each case with the
    cores other processes used ("other_load") and the 1-minute load average at its start, end."""
    from tqdm.auto import tqdm

    results = []
    with tqdm(
        total=sum(len(w.cases) for w in workloads),
        desc=description,
        unit="case",
        leave=False,
        disable=None if progress else True,
    ) as bar:
        for workload in workloads:
            cases = []
            for case in workload.cases:
                bar.set_postfix_str(f"{workload.key}: {case.name}")
                load_start = (load_average() or [None])[0]
                with OtherLoad() as load:
                    rows = run_case(workload, case, backends, pause)
                bar.update()
                _add_ratios(rows, backends)
                cases.append(
                    {
                        "name": case.name,
                        "params": case.params,
                        "work": case.work,
                        "headline": case.headline,
                        "results": rows,
                        "other_load": load.cores,
                        "load_average": [load_start, (load_average() or [None])[0]],
                    }
                )
            results.append(
                {
                    "key": workload.key,
                    "title": workload.title,
                    "unit": workload.unit,
                    "higher_is_better": workload.throughput,
                    "note": workload.note,
                    "repeats": workload.repeats,
                    "warmup": workload.warmup,
                    "min_time_s": workload.min_time,
                    "max_time_s": workload.max_time,
                    "cases": cases,
                }
            )
    return results


# ---- machine description ---------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                text=True,
                capture_output=True,
                timeout=5,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_names(backends: list[Backend]) -> list[str]:
    names = []
    torch = import_torch()
    if torch is not None and torch.cuda.is_available():
        names += [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if any(b.available and b.hardware == "mps" for b in backends):
        names.append(f"Apple GPU (Metal), {platform.machine()}")
    if not names and any(b.available and b.hardware == "cuda" for b in backends):
        info = getattr(ndl.cuda().mod, "device_info", None)
        names.append(
            info()["name"]
            if info is not None
            else "CUDA GPU (name unknown: torch with CUDA is not installed)"
        )
    for b in backends:  # a WebGPU adapter that is a GPU (its type is not CPU)
        adapter = webgpu_adapter(b.handle) if b.available and b.device == "webgpu" else None
        if adapter is not None and not adapter.endswith(", CPU)"):
            names.append(f"{adapter} through WebGPU")
    return names


def git_commit() -> str:
    """The short commit of needle's source checkout (+"-dirty" with local changes), or
    "unknown" outside a git checkout."""
    folder = os.path.dirname(os.path.abspath(ndl.__file__))

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", *args], cwd=folder, text=True, capture_output=True, timeout=10
        )

    try:
        commit = git("rev-parse", "--short", "HEAD")
        if commit.returncode != 0:
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine_info(
    backends: list[Backend], threads: dict[str, Any], load_start: list[float] | None = None
) -> dict[str, Any]:
    torch = import_torch()
    versions = {
        "needle": ndl.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__ if torch else None,
    }
    cpu_backend = ndl.cpu().mod
    if cpu_backend is not None and hasattr(cpu_backend, "__gemm_isa__"):
        versions["needle_cpu_gemm"] = cpu_backend.__gemm_isa__
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "gpus": gpu_names(backends),
        "threads": threads,
        "cores_used": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "versions": versions,
        "commit": git_commit(),
        "env": {
            k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ
        },
        # Other processes' load skews every number: a reader should see it.
        "load_average": {"start": load_start, "end": load_average()},
    }


# ---- tables and charts ---------------------------------------------------------------
def format_value(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3g}"


# The mark of an unreliable row (or of a ratio with one) in the tables, and its footnote.
UNRELIABLE = "≈"
UNRELIABLE_NOTE = (
    f"{UNRELIABLE}: unreliable: the median's 95% confidence interval stayed wider than "
    f"±{CI_TARGET:.0%} (or had under 6 repeats) up to the time cap; a ratio is the median of "
    "the same rounds' ratios, so marked when its own interval is wider."
)
TIMING_NOTE = (
    "median of {repeats}+ repeats after {warmup} warm-up call(s), the libraries' repeats "
    f"interleaved, in rounds until each median's 95% confidence interval is within ±{CI_TARGET:.0%}"
    " or {max_time:g} s have passed; ±: the interval's larger half."
)
LOAD_NOTE = (
    "Load: cores other processes used during the case (above 0.1, the row had company), and the "
    "1-minute load average at its start → end."
)


def mark(*rows: dict[str, Any]) -> str:
    """UNRELIABLE when any of `rows` (measured ones) is not reliable."""
    return "" if all(r.get("reliable", True) for r in rows) else UNRELIABLE


def ci_cell(row: dict[str, Any]) -> str:
    return f"±{row['ci']:.0%}" if row.get("ci") is not None else "± (under 6 repeats)"


def load_cell(case: dict[str, Any]) -> str:
    start, end = case.get("load_average") or (None, None)
    other = f"{case.get('other_load', float('nan')):.2f}"
    return other if start is None else f"{other} ({start:.1f} → {end:.1f})"


def format_cell(row: dict[str, Any]) -> str:
    if row["status"] == "ok":
        return mark(row) + format_value(row["value"])
    return (
        "not installed"
        if row["reason"] == "not installed"
        else ("not available" if row["status"] == "unavailable" else "error")
    )


def percent(ratio: float | None) -> str:
    if not ratio:
        return "—"
    return f"{ratio * 100:.0f}%" if ratio >= 0.1 else f"{ratio * 100:.2g}%"


def markdown_table(header: list[str], rows: list[list[str]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return ["| " + " | ".join(r) + " |" for r in [header, align] + rows]


def load_sentence(load: dict[str, Any]) -> str:
    if not load.get("start") or not load.get("end"):
        return ""
    return (
        f" Load average (1 min) {load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at "
        "the end (other processes sharing the cores make every number noisier)."
    )


def machine_sentence(machine: dict[str, Any]) -> str:
    """machine_info() in words: CPU, cores, GPUs, threads, versions and load."""
    threads = machine["threads"]
    gpus = ", ".join(machine["gpus"]) or "none"
    cores = machine.get("cores_used")
    held = f", on core(s) {', '.join(map(str, cores))}" if cores else ""
    return (
        f"Machine: {machine['cpu']}, {machine['cores']} cores; GPU: {gpus}. Threads: "
        f"{threads['requested']} for every library (needle {threads.get('needle')}, torch "
        f"{threads.get('torch', 'n/a')}, BLAS by environment){held}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
        + "."
        + load_sentence(machine["load_average"])
    )


def bar_chart(
    path: str,
    title: str,
    labels: Sequence[str],
    series: dict[str, list[float]],
    unit: str,
    log: bool = False,
    unreliable: dict[str, list[bool]] | None = None,
) -> str:
    """A grouped bar chart (one bar per series at each label) saved as a PNG, the bars that
    `unreliable` flags hatched and faded; needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(labels)), 4.5))
    width = 0.8 / max(1, len(series))
    handles = []  # the series' colours, plain: a hatched first bar would hatch its legend entry
    for i, (name, values) in enumerate(series.items()):
        bars = ax.bar([x + i * width for x in range(len(values))], values, width, label=name)
        handles.append(Patch(color=bars[0].get_facecolor(), label=name))
        for bar, flagged in zip(bars, (unreliable or {}).get(name, [])):
            if flagged:
                bar.set(hatch="//", alpha=0.45)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))], labels)
    if log:
        ax.set_yscale("log")
    ax.set(ylabel=unit, title=title)
    ax.grid(alpha=0.3, axis="y")
    legend(ax, any(any(flags) for flags in (unreliable or {}).values()), handles=handles)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def legend(ax, unreliable: bool, marker: bool = False, handles: list | None = None) -> None:
    """The axes' legend (of `handles`, or of what was drawn), with an entry for the unreliable
    marks when there are any: hatched bars, or hollow markers on a line plot (`marker`)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = list(handles or ax.get_legend_handles_labels()[0])
    label = f"{UNRELIABLE} unreliable: 95% CI wider than ±{CI_TARGET:.0%}"
    if unreliable and marker:
        handles.append(Line2D([], [], ls="", marker="o", color="gray", mfc="white", label=label))
    elif unreliable:
        handles.append(Patch(facecolor="white", edgecolor="gray", hatch="//", label=label))
    ax.legend(handles=handles)


# ---- scripts: benchmarks/*.py ------------------------------------------------------------
Configure = Callable[[argparse.Namespace], tuple[list[Workload], list[Backend]]]


def measure_configuration(
    configure: Configure, args: argparse.Namespace, threads: int
) -> dict[str, Any]:
    """A script's workloads on its backends at `threads` threads, in this process: JSON-ready
    (machine, backends, measured workloads)."""
    used = set_threads(threads)
    workloads, backends = configure(args)
    for workload in workloads:
        workload.repeats = max(1, workload.repeats if args.repeats is None else args.repeats)
        if args.max_time_per_case is not None:
            workload.max_time = args.max_time_per_case
    start = load_average()
    measured = run_benchmarks(
        workloads,
        backends,
        pause=args.pause,
        progress=not args.no_progress,
        description="bench",
    )
    return {
        "machine": machine_info(backends, used, start),
        "backends": [b.name for b in backends],
        "workloads": measured,
    }


def script_table(
    workload: dict[str, Any], backends: Sequence[str], ratios: Sequence[tuple[str, str]] = ()
) -> list[str]:
    """A measured workload as Markdown: one row per case, a column per backend (value and
    its confidence interval), one per ratio (a's speed relative to b's: 90% = b takes 0.9x a's
    time) and the load; a footnote when a row is unreliable."""
    better = "higher is better" if workload["higher_is_better"] else "lower is better"
    timing = TIMING_NOTE.format(max_time=workload.get("max_time_s", 0), **workload)
    lines = [f"{workload['unit']}, {better}; {timing} {LOAD_NOTE}", ""]
    rows = []
    for case in workload["cases"]:
        results = case["results"]
        cells = [
            f"{format_cell(r)} {ci_cell(r)}" if r["status"] == "ok" else format_cell(r)
            for r in (results[name] for name in backends)
        ]
        for a, b in ratios:
            ra, rb = results[a], results[b]
            if ra["status"] == rb["status"] == "ok":
                ratio, steady = speed_ratio(ra, rb)
                cells.append(("" if steady else UNRELIABLE) + percent(ratio))
            else:
                cells.append("—")
        rows.append([case["name"]] + cells + [load_cell(case)])
    header = ["case"] + list(backends) + [f"{a} vs {b}" for a, b in ratios] + ["load"]
    return lines + markdown_table(header, rows) + footnote(workload)


def footnote(workload: dict[str, Any]) -> list[str]:
    """UNRELIABLE_NOTE below a table that has an unreliable row."""
    measured = [r for c in workload["cases"] for r in c["results"].values() if r["status"] == "ok"]
    return ["", UNRELIABLE_NOTE] if mark(*measured) else []


def script_main(
    script: types.ModuleType,
    *,
    ratios: Sequence[tuple[str, str]]
    | Callable[[argparse.Namespace], Sequence[tuple[str, str]]] = (),
    threads: str = "1",
    argv: list[str] | None = None,
) -> int:
    """The command line of the benchmark script `script` (its module; its docstring describes
    it). `ratios` names the (a, b) backend pairs compared in the tables (or is a function of
    the parsed arguments that returns them, when the backends depend on an option), `threads`
    the default of --threads. The script defines `configure(args)`, which returns its
    workloads and backends, and may define `arguments(parser)`, which adds the script's own
    options, `skip(args)`, which returns why there is nothing to measure here (printed, exit
    status 0), and `after(args, results)`, which runs once the tables are printed.

    Each thread count of --threads is measured in a process whose environment pins every
    library to it (this one, if it already is). The tables are Markdown; --write appends them
    to a file as a dated section, --plot draws the first workload as a bar chart, --json-out
    writes the raw results (machine, backends, timings) for other programs to read."""
    description = script.__doc__ or ""
    configure: Configure = script.configure
    arguments = getattr(script, "arguments", None)
    skip = getattr(script, "skip", None)
    after = getattr(script, "after", None)
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument(
        "--threads",
        default=threads,
        help=f"comma-separated thread counts, one run each (default {threads})",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="the least repeats (overrides the script's)"
    )
    parser.add_argument(
        "--max-time-per-case",
        type=float,
        default=None,
        help="seconds of rounds per case until each median's 95%% confidence interval is within "
        "±5%%; a row still wider is reported unreliable (default: the script's, 10 for most)",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=0.2,
        help="seconds between libraries, for BLAS workers to go idle",
    )
    parser.add_argument("--plot", help="also draw the first table as a bar chart in this PNG")
    parser.add_argument("--write", help="append the tables to this Markdown file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--json-out", help="also write the results (one entry per thread count) to this JSON file"
    )
    parser.add_argument("--json", help=argparse.SUPPRESS)  # a child's results, for its parent
    if arguments is not None:
        arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if callable(ratios):
        ratios = ratios(args)
    reason = skip(args) if skip is not None else None
    if reason:
        print(reason)
        return 0
    counts = [int(t) for t in str(args.threads).split(",") if t.strip()]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(measure_configuration(configure, args, counts[0]), f)
        return 0
    results = []
    for count in counts:
        if len(counts) == 1 and threads_pinned(count):
            results.append(measure_configuration(configure, args, count))
            continue
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "results.json")
            status = run_pinned(
                count,
                [
                    sys.executable,
                    os.path.abspath(sys.argv[0]),
                    *argv,
                    "--threads",
                    str(count),
                    "--json",
                    path,
                ],
            )
            if status != 0:
                return status
            with open(path) as f:
                results.append(json.load(f))
    command = " ".join(["python", os.path.relpath(sys.argv[0]), *argv])
    lines = [(f"`{command}` at commit {git_commit()}, {datetime.date.today().isoformat()}."), ""]
    for result in results:
        lines += [machine_sentence(result["machine"]), ""]
        for workload in result["workloads"]:
            threads_used = result["machine"]["threads"]["requested"]
            lines += [f"### {workload['title']}, {threads_used} thread(s)", ""]
            lines += script_table(workload, result["backends"], ratios) + [""]
    text = "\n".join(lines)
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"command": command, "commit": git_commit(), "results": results}, f, indent=1)
        print(f"wrote {args.json_out}")
    if args.write:
        with open(args.write, "a") as f:
            f.write(f"\n## {description.splitlines()[0]}\n\n{text}")
        print(f"appended to {args.write}")
    if args.plot:
        first = results[0]["workloads"][0]
        names = [
            n
            for n in results[0]["backends"]
            if any(c["results"][n]["status"] == "ok" for c in first["cases"])
        ]
        rows = {n: [c["results"][n] for c in first["cases"]] for n in names}
        bar_chart(
            args.plot,
            f"{first['title']}, {results[0]['machine']['threads']['requested']} thread(s)",
            [c["name"] for c in first["cases"]],
            {n: [r.get("value", 0.0) for r in rows[n]] for n in names},
            first["unit"],
            unreliable={n: [bool(mark(r)) for r in rows[n]] for n in names},
        )
        print(f"wrote {args.plot}")
    if after is not None:
        after(args, results)
    return 0
