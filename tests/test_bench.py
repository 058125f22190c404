"""`needle bench`: end to end on a tiny budget, the results.json schema, and missing backends
(torch not installed, a device not built) reported in the tables rather than crashing."""

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import needle as ndl
from needle.apps import bench, cli
from needle.apps.bench import harness, workloads
from needle.apps.bench.report import render_workload

PACKAGE_ROOT = str(Path(ndl.__file__).resolve().parents[1])
TINY = ["--tiny", "--threads", "1", "--no-progress"]


def _env(**extra):
    """This interpreter's environment, with needle importable (a source checkout or an install)."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    return env


def check_schema(results: dict) -> None:
    """The documented shape of results.json."""
    assert results["schema"] == bench.SCHEMA
    assert results["mode"] in ("quick", "full", "tiny")
    assert isinstance(results["created"], str) and results["command"].startswith("needle bench")
    assert results["seconds"] >= 0
    machine = results["machine"]
    assert isinstance(machine["cpu"], str) and machine["cpu"]
    assert isinstance(machine["cores"], int) and machine["cores"] >= 1
    assert isinstance(machine["gpus"], list)
    assert isinstance(machine["commit"], str) and machine["commit"]
    assert machine["threads"]["requested"] >= 1
    for library in ("needle", "python", "numpy", "torch"):
        assert library in machine["versions"]
    names = []
    for backend in results["backends"]:
        assert backend["library"] in ("needle", "torch")
        assert isinstance(backend["available"], bool)
        assert backend["available"] or backend["reason"]
        # "library device"; webgpu adds its adapter: "needle webgpu (llvmpipe (...) (Vulkan, CPU))"
        assert backend["name"] == f"{backend['library']} {backend['device']}" or (
            backend["device"] == "webgpu" and backend["name"].startswith("needle webgpu (")
        )
        names.append(backend["name"])
    assert [w["key"] for w in results["workloads"]] == [
        k for k in workloads.WORKLOADS if k in {w["key"] for w in results["workloads"]}
    ]
    for workload in results["workloads"]:
        assert workload["unit"] in ("GFLOP/s", "GB/s", "us", "ms")
        assert isinstance(workload["higher_is_better"], bool)
        assert workload["cases"]
        for case in workload["cases"]:
            assert isinstance(case["name"], str) and isinstance(case["params"], dict)
            assert (case["work"] is not None) == workload["higher_is_better"]
            assert sorted(case["results"]) == sorted(names)
            assert case["other_load"] >= 0 and len(case["load_average"]) == 2
            for _name, row in case["results"].items():
                assert row["status"] in ("ok", "unavailable", "error"), row
                if row["status"] != "ok":
                    assert row["reason"]
                    continue
                assert len(row["times_s"]) >= workload["repeats"]
                assert all(t > 0 for t in row["times_s"]) and row["calls_per_repeat"] >= 1
                assert row["median_s"] > 0 and row["spread"] >= 0 and row["value"] > 0
                assert row["reliable"] == (row["ci"] is not None and row["ci"] <= 0.05)
                for ratio in ("speed_vs_torch", "speed_vs_needle_cpu"):
                    assert row[ratio] is None or row[ratio] > 0
    assert isinstance(results["plots"], list)
    for device in results["not_measured"]:
        assert device["name"] not in names and device["reason"]


def test_quick_runs_end_to_end(tmp_path):
    # Started without the thread variables set, so it also re-executes itself with them.
    env = _env()
    for name in harness.THREAD_ENV:
        env.pop(name, None)
    out = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, "-m", "needle", "bench", "--quick", *TINY, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "done in" in result.stdout
    results = json.loads((out / "results.json").read_text())
    check_schema(results)
    assert results["mode"] == "tiny" and results["machine"]["threads"]["requested"] == 1
    assert [w["key"] for w in results["workloads"]] == list(workloads.WORKLOADS)
    if not ndl.cuda().enabled():
        assert {
            "name": "needle cuda",
            "reason": f"not available: {ndl.cuda().reason}",
        } in results["not_measured"]
    if ndl.cpu().enabled():
        needle_cpu = results["workloads"][0]["cases"][0]["results"]["needle cpu"]
        assert needle_cpu["status"] == "ok"
        assert needle_cpu["speed_vs_needle_cpu"] == pytest.approx(1)
    # tiny: 2 repeats and no time for more, too few for a 95% interval: every row unreliable
    assert all(not r["reliable"] for c in results["workloads"][0]["cases"] for r in oks(c))
    report = (out / "report.md").read_text()
    assert "≈" in report and harness.UNRELIABLE_NOTE in report and "± (under 6 repeats)" in report
    for title in (
        "## Summary",
        "## Matrix multiplication",
        "## Elementwise",
        "## Eager overhead",
        "## Training step",
        "MLP 784-32-32-10",
    ):
        assert title in report
    pytest.importorskip("matplotlib")
    assert sorted(results["plots"]) == ["elementwise.png", "matmul.png", "train.png"]
    for plot in results["plots"]:
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


_WITHOUT_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("blocked for the test")
            return None

    sys.meta_path.insert(0, BlockTorch())
    from needle.apps import cli
    sys.exit(cli.main(sys.argv[1:]))
    """
)


def test_missing_torch_and_missing_device_are_reported(tmp_path):
    out = tmp_path / "bench"
    args = [
        "bench",
        *TINY,
        "--devices",
        "cpu,cuda,needle:nosuch",
        "--workloads",
        "matmul,train",
        "--out",
        str(out),
    ]
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, *args],
        env=_env(**harness.thread_env(1, {})),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    check_schema(results)
    backends = {b["name"]: b for b in results["backends"]}
    assert set(backends) == {
        "needle cpu",
        "torch cpu",
        "needle cuda",
        "torch cuda",
        "needle nosuch",
    }
    assert backends["torch cpu"]["reason"] == "not installed"
    assert results["machine"]["versions"]["torch"] is None
    assert not backends["needle nosuch"]["available"]
    for case in results["workloads"][0]["cases"]:
        assert case["results"]["torch cpu"]["status"] == "unavailable"
        assert case["results"]["needle cpu"]["status"] == "ok"
        assert case["results"]["needle cpu"]["speed_vs_torch"] is None
    report = (out / "report.md").read_text()
    assert "torch cpu: not installed" in report and "| not installed |" in report
    assert "needle nosuch: no such needle device" in report
    if not ndl.cuda().enabled():
        assert "needle cuda: not available" in report


def test_measure_warms_up_synchronises_and_repeats():
    calls, syncs = [], []
    timing = harness.measure(
        lambda: calls.append(1), lambda: syncs.append(1), repeats=4, warmup=3, min_time=0.0
    )
    assert len(timing.times) == 4 and timing.calls_per_repeat == 1
    assert len(calls) == 3 + 1 + 4  # warm-up, the sizing call, the repeats
    assert len(syncs) == 1 + 1 + 4  # after the warm-up, the sizing call and every repeat
    assert timing.median > 0 and timing.spread >= 0
    # Fast functions get many calls per repeat, so each repeat outlasts the timer's resolution.
    assert harness.measure(lambda: None, repeats=2, warmup=0, min_time=0.01).calls_per_repeat > 10


def test_device_selection():
    default = [b.name for b in harness.discover_backends()]
    assert "needle cpu_numpy" in default and "torch cpu" in default
    assert all(b.available for b in harness.discover_backends() if b.library == "needle")
    picked = harness.discover_backends("cpu, needle:cpu_numpy, torch:cpu")
    assert [b.name for b in picked] == ["needle cpu", "torch cpu", "needle cpu_numpy"]
    assert [b.hardware for b in picked] == ["cpu", "cpu", "cpu"]
    with pytest.raises(ValueError, match="library"):
        harness.discover_backends("jax:cpu")
    with pytest.raises(ValueError, match="torch devices"):
        harness.discover_backends("torch:cpu_numpy")


def test_a_failing_case_is_reported_not_raised():
    def broken(backend):
        raise RuntimeError("kernel missing")

    workload = harness.Workload(
        "overhead",
        "t",
        "us",
        "",
        [harness.Case("broken", broken)],
        repeats=1,
        warmup=0,
        min_time=0.0,
    )
    backends = harness.discover_backends("needle:cpu_numpy")
    rows = harness.run_benchmarks([workload], backends, pause=0, progress=False)[0]["cases"][0]
    assert rows["results"]["needle cpu_numpy"] == {
        "status": "error",
        "reason": "RuntimeError: kernel missing",
    }


@pytest.mark.parametrize("spec", workloads.train_specs("tiny"), ids=lambda s: s.model)
def test_needle_and_torch_train_the_same_models(spec):
    torch = pytest.importorskip("torch")
    model, X, y = workloads.needle_model(spec, ndl.cpu_numpy())
    torch_model, x, labels = workloads.torch_model(spec, torch.device("cpu"))
    needle_sizes = sorted(int(np.prod(p.shape)) for p in model.parameters())
    torch_sizes = sorted(p.numel() for p in torch_model.parameters())
    assert needle_sizes == torch_sizes
    assert tuple(X.shape) == tuple(x.shape) and tuple(y.shape) == tuple(labels.shape)
    workloads.needle_train_step(spec, ndl.cpu_numpy())()  # one step runs


def test_cli_has_bench():
    args = cli.build_parser().parse_args(
        ["bench", "--quick", "--devices", "cpu", "--threads", "2", "--out", "x"]
    )
    assert args.command == "bench" and args.quick and args.threads == 2
    assert bench._as_argv(args) == ["--quick", "--devices", "cpu", "--threads", "2", "--out", "x"]


def oks(case: dict) -> list[dict]:
    return [r for r in case["results"].values() if r["status"] == "ok"]


def fake_case(durations: dict, repeats: int = 2, max_time: float = 100.0):
    """A workload of one case on fake backends named by `durations`, whose every call moves a
    fake clock by the next of durations[name]() seconds: (workload, backends, clock, log of
    builds and calls)."""
    now, log = [0.0], []

    def build(backend):
        log.append(("build", backend.name))

        def call():
            log.append(backend.name)
            now[0] += durations[backend.name]()

        return call

    case = harness.Case("fake", build)
    workload = harness.Workload("overhead", "t", "us", "", [case], repeats, 0, 0.0, max_time)
    backends = [harness.Backend("numpy", "cpu", label=name) for name in durations]
    return workload, backends, lambda: now[0], log


def test_rounds_interleave_and_stop_once_every_median_is_tight():
    workload, backends, clock, log = fake_case({"a": lambda: 1.0, "b": lambda: 2.0})
    rows = harness.run_case(workload, workload.cases[0], backends, clock=clock)
    # Built once each; warm-up (the sizing call) per backend; then rounds in rotating order,
    # each block (one call) after an untimed call; constant times: 6 rounds, the least that
    # gives a 95% interval (above the 2 repeats asked for).
    rounds = [["a", "b"], ["b", "a"]] * 3
    assert log == [("build", "a"), "a", ("build", "b"), "b"] + [
        name for order in rounds for name in order for _ in (0, 1)
    ]
    assert rows["a"]["times_s"] == [1.0] * 6 and rows["b"]["times_s"] == [2.0] * 6
    assert rows["a"]["ci"] == 0 and rows["a"]["reliable"] and rows["b"]["reliable"]


def test_a_noisy_row_runs_to_the_cap_and_is_unreliable():
    noise = np.random.default_rng(0)  # bimodal: 1 or 2 s, half and half
    durations = {"tight": lambda: 1.0, "noisy": lambda: float(noise.choice([1.0, 2.0]))}
    workload, backends, clock, _ = fake_case(durations, max_time=60.0)
    start = clock()
    rows = harness.run_case(workload, workload.cases[0], backends, clock=clock)
    tight, noisy = rows["tight"], rows["noisy"]
    # Both ran every round, until the first check at or past 60 s of rounds: the two sizing
    # calls (2-3 s) and the rounds (at most 4 calls of 2 s each).
    assert len(tight["times_s"]) == len(noisy["times_s"]) > 6
    assert 60.0 + 2 <= clock() - start < 60.0 + 3 + 4 * 2.0
    assert set(noisy["times_s"]) == {1.0, 2.0} and noisy["ci"] >= 0.5 and not noisy["reliable"]
    assert tight["reliable"]
    # The median's interval on known samples: exact binomial ranks.
    assert harness.median_ci([1.0] * 5) is None  # 5 repeats: no 95% interval
    assert harness.median_ci([1.0] * 5 + [1.5]) == pytest.approx(0.5)  # 6: the range
    # 20 repeats: 5 outliers on each side stay outside; the 6th smallest or 15th counts.
    assert harness.median_ci([0.5] * 5 + [1.0] * 9 + [1.04] + [9.0] * 5) == pytest.approx(0.04)
    assert harness.median_ci([0.5] * 6 + [1.0] * 8 + [1.04] + [9.0] * 5) == pytest.approx(0.5)


def test_unreliable_rows_are_marked_in_json_tables_and_plots(tmp_path, monkeypatch):
    noise = np.random.default_rng(0)
    durations = {"tight": lambda: 1.0, "noisy": lambda: float(noise.choice([1.0, 2.0]))}
    workload, backends, clock, _ = fake_case(durations, max_time=30.0)
    monkeypatch.setattr(harness, "run_case", functools.partial(harness.run_case, clock=clock))
    (measured,) = harness.run_benchmarks([workload], backends, pause=0, progress=False)
    assert measured["max_time_s"] == 30.0
    (case,) = measured["cases"]
    assert [case["results"][n]["reliable"] for n in ("tight", "noisy")] == [True, False]
    table = "\n".join(harness.script_table(measured, ["tight", "noisy"], [("tight", "noisy")]))
    row = next(line for line in table.splitlines() if line.startswith("| fake |"))
    cells = row.strip("| ").split(" | ")
    assert cells[1] == "1,000,000 ±0%" and cells[2].startswith("≈")  # us per call
    assert cells[3].startswith("≈") and cells[3].endswith("%")  # the ratio: as unreliable
    assert table.endswith(harness.UNRELIABLE_NOTE)
    report = "\n".join(render_workload(measured, ["tight", "noisy"]))
    assert "| fake | tight | 1,000,000 | ±0% |" in report and "| noisy | ≈" in report
    pytest.importorskip("matplotlib")
    series = {n: [case["results"][n]["value"]] for n in ("tight", "noisy")}
    plain = harness.bar_chart(str(tmp_path / "plain.png"), "t", ["fake"], series, "us")
    flagged = {"tight": [False], "noisy": [True]}
    marked = harness.bar_chart(str(tmp_path / "m.png"), "t", ["fake"], series, "us", False, flagged)
    assert Path(marked).read_bytes()[:4] == b"\x89PNG"
    assert Path(marked).read_bytes() != Path(plain).read_bytes()  # hatched, with a legend entry


def test_webgpu_rows_name_the_adapter_and_synchronise(tmp_path):
    device = ndl.webgpu()
    if not device.enabled():
        pytest.skip(f"webgpu is disabled here: {device.reason}")
    adapter = device.mod.capabilities()["adapter"]
    (backend,) = harness.discover_backends("webgpu")  # needle's only: PyTorch has no webgpu
    assert backend.name == f"needle webgpu ({adapter})" and backend.hardware == "webgpu"
    # The device's work is asynchronous: the harness's synchronize submits it and waits.
    (x,) = harness.arrays(backend, (64,))
    submitted = device.mod.stats()["submissions"]
    x + x
    backend.synchronize()
    assert device.mod.stats()["submissions"] > submitted

    out = tmp_path / "bench"
    args = ["bench", *TINY, "--devices", "needle:webgpu,needle:cpu_numpy", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "needle", *args, "--workloads", "matmul,train"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    check_schema(results)
    assert [b["name"] for b in results["backends"]] == [backend.name, "needle cpu_numpy"]
    for workload in results["workloads"]:
        for case in workload["cases"]:
            assert case["results"][backend.name]["status"] == "ok", case["results"]
    # A CPU adapter (lavapipe) is not listed among the machine's GPUs.
    assert (adapter in " ".join(results["machine"]["gpus"])) == (not adapter.endswith(", CPU)"))
    assert f"| {backend.name} |" in (out / "report.md").read_text()


def test_nn_ops_script_runs_every_case(tmp_path):
    # benchmarks/bench_nn_ops.py at tiny sizes: every case times on both libraries (an op
    # renamed or a signature changed shows up here as an "error" cell, not as a stale script).
    pytest.importorskip("torch")
    if not ndl.cpu().enabled():
        pytest.skip(f"needle cpu is disabled here: {ndl.cpu().reason}")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_nn_ops.py"
    result = subprocess.run(
        [sys.executable, str(script), "--tiny", "--no-progress", "--write", str(tmp_path / "r.md")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    tables = result.stdout.split("### ")[1:]
    assert [t.splitlines()[0] for t in tables] == [
        "nn ops, forward (float32), 1 thread(s)",
        "nn ops, forward + backward (float32), 1 thread(s)",
    ]
    for table in tables:
        rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
        names = [row.split(" | ")[0][2:] for row in rows[1:]]
        assert [n.split()[0] for n in names] == [
            "max_pool2d", "avg_pool2d", "cat", "gather", "softmax", "layer_norm", "gelu", "gelu",
            "sdpa",
        ]  # fmt: skip
        for row in rows[1:]:
            cells = row.strip("| ").split(" | ")
            assert "error" not in cells and "not available" not in cells, row
            assert cells[3].endswith("%"), row  # the needle / torch ratio
    assert "nn ops" in (tmp_path / "r.md").read_text()


def test_sgemm_script_rehearses_on_the_cpu_and_writes_json(tmp_path):
    # benchmarks/bench_cuda.py --device cpu: the SGEMM sweep and MLP steps that
    # benchmarks/gpu_check.sh runs on a GPU, on the CPU here, with --json-out's results.
    pytest.importorskip("torch")
    if not ndl.cpu().enabled():
        pytest.skip(f"needle cpu is disabled here: {ndl.cpu().reason}")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cuda.py"
    out = tmp_path / "cuda.json"
    args = ["--device", "cpu", "--sizes", "32,64", "--batches", "8", "--repeats", "1"]
    args += ["--max-time-per-case", "0"]
    result = subprocess.run(
        [sys.executable, str(script), *args, "--no-progress", "--json-out", str(out)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "| needle cpu vs torch cpu |" in result.stdout
    (measured,) = json.loads(out.read_text())["results"]
    assert measured["backends"] == ["needle cpu", "torch cpu"]
    matmul, train = measured["workloads"]
    assert [c["params"]["n"] for c in matmul["cases"]] == [32, 64]
    assert [(c["params"]["model"], c["params"]["batch"]) for c in train["cases"]] == [("mlp", 8)]
    for case in matmul["cases"] + train["cases"]:
        assert case["results"]["needle cpu"]["speed_vs_torch"] > 0


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="core affinity is Linux's")
def test_a_run_of_fewer_threads_than_cores_is_held_to_that_many_cores(monkeypatch):
    allowed = sorted(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert harness.cores_for(1) == [3] and harness.cores_for(3) == [1, 2, 3]
    assert harness.cores_for(4) is None and harness.cores_for(8) is None
    monkeypatch.undo()
    if len(allowed) < 2:
        pytest.skip("one core: nothing to hold back")
    # the child exits 0 when its cores are the ones expected
    check = "import os, sys; sys.exit(0 if sorted(os.sched_getaffinity(0)) == {} else 3)"
    one = [sys.executable, "-c", check.format([allowed[-1]])]
    assert harness.run_pinned(1, one) == 0
    every = [sys.executable, "-c", check.format(allowed)]
    assert harness.run_pinned(len(allowed), every) == 0


def test_ratios_of_rows_timed_in_the_same_rounds_are_medians_of_per_round_ratios():
    """A slow phase of the machine slows every library's block of a round: each median's
    interval stays wide, the per-round ratio does not. Rows of unequal rounds fall back to
    the ratio of medians, reliable only when both medians are."""
    phase = [1.0, 1.6, 1.1, 1.5, 1.0, 1.7, 1.2, 1.4, 1.0, 1.6, 1.3, 1.5]

    def row(base, factors):
        times = [base * f for f in factors]
        ci = harness.median_ci(times)
        return {
            "times_s": times,
            "median_s": float(np.median(times)),
            "reliable": harness.reliable(ci),
        }

    needle, torch = row(2.0, phase), row(3.0, phase)
    assert not needle["reliable"] and not torch["reliable"]
    ratio, steady = harness.speed_ratio(needle, torch)
    assert ratio == pytest.approx(1.5) and steady
    noisy = row(3.0, [p * (1.3 if i % 2 else 0.8) for i, p in enumerate(phase)])
    assert not harness.speed_ratio(needle, noisy)[1]  # the ratio itself varies round to round
    shorter = row(3.0, phase[:-1])
    ratio, steady = harness.speed_ratio(needle, shorter)
    assert ratio == pytest.approx(shorter["median_s"] / needle["median_s"]) and not steady
