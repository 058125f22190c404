"""The tooling around the code: the native modules' stubs, py.typed and the line budget."""

import ast
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import needle as ndl

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "needle"

# Attributes every extension module has, which a stub does not declare.
_MODULE_MACHINERY = {"__doc__", "__file__", "__loader__", "__name__", "__package__", "__spec__"}


def _public(names):
    """Public names and dunder constants; `_private` helpers (test hooks) are not stubbed."""
    return {n for n in names if not n.startswith("_") or (n.startswith("__") and n.endswith("__"))}


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stub_names(body):
    """Names a stub's module or class body declares (imports left out)."""
    names = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _shared_stub():
    """The stub-only module that the native modules' stubs re-export from, and its __all__."""
    shared = ast.parse((PACKAGE / "backend_ndarray" / "_primitive_stubs.pyi").read_text())
    (exported,) = (
        ast.literal_eval(node.value)
        for node in shared.body
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["__all__"]
    )
    assert set(exported) <= _stub_names(shared.body)
    return shared, set(exported)


def _reexported(body):
    """Names a stub takes from the shared stub and re-exports: `import *` its __all__, and
    each `name as name`."""
    shared, exported = _shared_stub()
    names = set()
    for node in body:
        if isinstance(node, ast.ImportFrom) and (node.level, node.module) == (
            1,
            "_primitive_stubs",
        ):
            for alias in node.names:
                if alias.name == "*":
                    names |= exported
                elif alias.asname == alias.name:
                    names.add(alias.name)
    assert names <= _stub_names(shared.body), names - _stub_names(shared.body)
    return names


def _class_members(node):
    """What a stub's class declares, with what it inherits from a class of the shared stub."""
    members = _stub_names(node.body)
    shared, _ = _shared_stub()
    for base in node.bases:
        if ast.unparse(base).startswith("_primitive_stubs."):
            name = ast.unparse(base).split(".", 1)[1]
            (inherited,) = (
                n for n in shared.body if isinstance(n, ast.ClassDef) and n.name == name
            )
            members |= _stub_names(inherited.body)
    return members


@pytest.mark.parametrize("name", ["ndarray_backend_cpu", "ndarray_backend_cuda"])
def test_native_stub_declares_exactly_the_module_names(name):
    try:
        module = importlib.import_module(f"needle.backend_ndarray.{name}")
    except ImportError as error:
        pytest.skip(f"{name} is not built here: {error}")
    stub = ast.parse((PACKAGE / "backend_ndarray" / f"{name}.pyi").read_text())
    hint = "stale stub: run python tools/gen_stubs.py after building"

    declared = _public(_stub_names(stub.body) | _reexported(stub.body))
    actual = _public(dir(module)) - _MODULE_MACHINERY
    assert declared == actual, (
        f"{hint}; missing from the stub: {sorted(actual - declared)}, "
        f"not in the module: {sorted(declared - actual)}"
    )

    classes = {node.name: node for node in stub.body if isinstance(node, ast.ClassDef)}
    for class_name, node in classes.items():
        # What the class itself defines (an exception's inherited `args` is not stubbed).
        members = {n for n in vars(getattr(module, class_name)) if not n.startswith("_")}
        stubbed = {n for n in _class_members(node) if not n.startswith("_")}
        assert stubbed == members, f"{hint}; {class_name}: {sorted(members ^ stubbed)}"


def test_package_ships_type_information():
    # scikit-build-core puts every file under python/needle into the wheel (wheel.packages).
    assert (PACKAGE / "py.typed").is_file()
    for name in ("_primitive_stubs", "ndarray_backend_cpu", "ndarray_backend_cuda"):
        assert (PACKAGE / "backend_ndarray" / f"{name}.pyi").is_file()


def test_every_source_file_belongs_to_a_budgeted_layer():
    budget = _load_tool("line_budget")
    files = budget.project_files(ROOT)
    code = [
        p
        for p in files
        if p.startswith(("python/needle/", "src/", "tests/", "benchmarks/"))
        and p.endswith((".py", ".cc", ".h", ".cu", ".cuh", ".metal", ".wgsl"))
    ]
    assert code
    assert [p for p in code if budget.layer_of(p) is None] == []
    assert budget.layer_of("python/needle/autograd.py") == "autograd"
    assert budget.layer_of("python/needle/backend_ndarray/metal/reduce.metal") == "metal kernels"
    assert budget.layer_of("python/needle/backend_ndarray/ndarray_backend_cpu.pyi") is None
    assert budget.layer_of("python/needle/some_new_module.py") == "other python"


def test_line_budget_counts_and_fails_over_budget(tmp_path, monkeypatch, capsys):
    budget = _load_tool("line_budget")
    (tmp_path / "python" / "needle").mkdir(parents=True)
    (tmp_path / "python" / "needle" / "autograd.py").write_text(
        '"""Doc."""\n\n# comment\nimport os\n\n\ndef f():\n    """Doc."""\n    return os\n'
    )
    (tmp_path / "src" / "cpu").mkdir(parents=True)
    (tmp_path / "src" / "cpu" / "a.cc").write_text("// c\nint a;  // x\n/* b\n */\n\nint b;\n")

    sizes = budget.sizes(tmp_path)
    assert sizes["autograd"] == (1, 6, 3)  # non-blank; code without comments and docstrings
    assert sizes["native cpu"] == (1, 5, 2)
    assert sizes["ops"] == (0, 0, 0)

    monkeypatch.setattr(budget, "ROOT", tmp_path)
    assert budget.main([]) == 0
    monkeypatch.setattr(budget, "LAYERS", [("autograd", ("python/needle/autograd.py",), 5)])
    assert budget.main([]) == 1
    out, err = capsys.readouterr()
    assert "OVER BUDGET" in out and "autograd (6 > 5)" in err


def test_line_budget_script_prints_every_layer():
    budget = _load_tool("line_budget")
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "line_budget.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode in (0, 1), result.stderr
    printed = {line[:16].strip() for line in result.stdout.splitlines()}
    assert {name for name, _, _ in budget.LAYERS} <= printed


def _collect(devices):
    """`pytest --collect-only` of a device suite and the conformance suite under
    NEEDLE_TEST_DEVICES=devices: (exit status, test ids, stderr)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
        + ["tests/test_ndarray.py", "tests/backends/test_conformance.py"],
        cwd=ROOT,
        env={**os.environ, "NEEDLE_TEST_DEVICES": devices},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.returncode, [t for t in result.stdout.splitlines() if "::" in t], result.stderr


def test_test_devices_variable_keeps_only_the_named_devices():
    # benchmarks/gpu_check.sh runs the device tests on the GPU alone this way.
    status, ids, err = _collect("cpu_numpy")
    assert status == 0, err
    params = {t.split("[", 1)[1].split("-")[0].rstrip("]") for t in ids if "[" in t}
    # (NOTSET: a test with no case on these devices, test_half_row where none lists HALF_ROWS)
    conformance = [t for t in ids if "test_conformance" in t and "[NOTSET]" not in t]
    assert conformance and all("[numpy" in t for t in conformance)  # cpu_numpy's backend
    assert "cpu_numpy" in params and not params & {"cpu", "cuda", "webgpu", "cuda_emulated"}
    status, _, err = _collect("no_such_device")
    assert status == 4 and "NEEDLE_TEST_DEVICES: no device 'no_such_device'" in err
    disabled = [d.name for d in ndl.all_devices() if not d.enabled()]
    if disabled:  # a device this machine has not got is an error, not zero tests
        status, _, err = _collect(disabled[0])
        assert status == 4 and f"{disabled[0]}() is not enabled" in err


def _gpu_check_folder(out, *, sanitizer_errors, mlp_ratio, tests_passed=10, bench_rc="0"):
    """What benchmarks/gpu_check.sh leaves in its folder after a run on cuda, fabricated."""
    (out / "logs").mkdir(parents=True)
    (out / "tests").mkdir()
    (out / "bench").mkdir()
    steps = [
        ("machine", "0", "3", "60", ""),
        ("install", "0", "95", "240", "needle: building the CUDA backend for 90-real"),
        ("tests", "1", "180", "240", ""),
        ("bench-cuda", "0", "40", "90", ""),
        ("sanitizer", "0", "70", "120", ""),
        ("bench", bench_rc, "150", "150", "--devices cpu,cuda"),
        ("tests-webgpu", "skipped", "0", "120", "wgpu is not installed"),
    ]
    (out / "steps.tsv").write_text("".join("\t".join(s) + "\n" for s in steps))
    (out / "tests" / "tests.xml").write_text(
        f'<testsuites><testsuite tests="{tests_passed + 3}" failures="1" errors="0" '
        'skipped="2"/></testsuites>'
    )
    (out / "logs" / "sanitizer.log").write_text(
        f"========= COMPUTE-SANITIZER\n...\n========= ERROR SUMMARY: {sanitizer_errors} errors\n"
    )
    (out / "machine.json").write_text(json.dumps({"gpus": ["NVIDIA H200, 580.1"], "nvcc": None}))

    def case(params, needle_s, torch_s, name="case"):
        rows = {"needle cuda": needle_s, "torch cuda": torch_s}
        return {
            "name": name,
            "params": params,
            "results": {k: {"status": "ok", "median_s": v} for k, v in rows.items()},
        }

    matmul = [case({"m": n, "n": n, "p": n}, t, 1.0) for n, t in [(4096, 1.25), (8192, 2.0)]]
    matmul.append(case({"m": 4096, "n": 256, "p": 4096}, 9.0, 1.0))  # not square: ignored
    train = [case({"model": "mlp", "batch": b}, r, 1.0) for b, r in [(128, 1.5), (1024, mlp_ratio)]]
    workloads = [{"key": "matmul", "cases": matmul}, {"key": "train", "cases": train}]
    (out / "bench_cuda.json").write_text(json.dumps({"results": [{"workloads": workloads}]}))
    resnet = case({"model": "resnet9"}, 0.004, 0.002, "ResNet-9 3x32x32, batch 128")
    results = {"workloads": [{"key": "train", "cases": [resnet]}]}
    (out / "bench" / "results.json").write_text(json.dumps(results))


def _table_row(text, first_cell):
    (row,) = [line for line in text.splitlines() if line.startswith(f"| {first_cell} |")]
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_gpu_check_summary_gives_each_step_and_target_its_verdict(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "gpu_check_summary", ROOT / "benchmarks" / "gpu_check_summary.py"
    )
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)

    good = tmp_path / "good"
    _gpu_check_folder(good, sanitizer_errors=0, mlp_ratio=1.9)
    (good / "steps.tsv").write_text(
        (good / "steps.tsv").read_text().replace("tests\t1", "tests\t0")
    )
    text, status = summary.summary(good, "cuda", dry_run=False)
    assert status == 0 and "**PASS: no step failed.**" in text
    assert _table_row(text, "install")[1:] == [
        "pass", "95", "240", "needle: building the CUDA backend for 90-real"
    ]  # fmt: skip
    assert _table_row(text, "tests")[1:] == ["pass", "180", "240", "10 passed, 1 failed, 2 skipped"]
    assert _table_row(text, "tests-webgpu")[1] == "skipped"
    assert _table_row(text, "sanitizer")[1:] == ["pass", "70", "120", "0 memcheck error(s)"]
    # SGEMM at 4096 (not at the largest size): cuBLAS's 1.0 s against needle's 1.25 s
    assert _table_row(text, "SGEMM 4096: needle >= 0.7x cuBLAS's speed (TF32 off)")[1:] == [
        "0.80x at 4096", "met"
    ]  # fmt: skip
    assert _table_row(text, "MLP step: needle <= 2.0x PyTorch's time")[1:] == [
        "1.50x at batch 128, 1.90x at batch 1024", "met"
    ]  # fmt: skip
    assert _table_row(text, "compute-sanitizer memcheck: 0 errors")[1:] == ["0 error(s)", "met"]
    assert _table_row(text, "ResNet-9 3x32x32, batch 128")[1:] == ["4.00", "2.00", "2.00x"]
    assert "GPU: NVIDIA H200, 580.1" in text and "nvcc not found" in text

    bad = tmp_path / "bad"
    _gpu_check_folder(bad, sanitizer_errors=3, mlp_ratio=2.5, tests_passed=0, bench_rc="124")
    text, status = summary.summary(bad, "cuda", dry_run=False)
    assert status == 1 and "**FAIL: tests, sanitizer, bench.**" in text
    assert _table_row(text, "tests")[1] == "fail"
    assert "no test passed" in _table_row(text, "tests")[4]
    assert _table_row(text, "sanitizer")[1:] == ["fail", "70", "120", "3 memcheck error(s)"]
    assert _table_row(text, "bench")[4] == "--devices cpu,cuda; timed out after 150 s"
    (bad / "logs" / "tests.log").write_text("ERROR: NEEDLE_TEST_DEVICES: cuda() | not enabled\n")
    text, _ = summary.summary(bad, "cuda", dry_run=False)
    assert _table_row(text, "tests")[4].startswith(
        "exit status 1; logs/tests.log ends: ERROR: NEEDLE_TEST_DEVICES: cuda() / not enabled;"
    )
    assert _table_row(text, "MLP step: needle <= 2.0x PyTorch's time")[2] == "missed"
    assert _table_row(text, "compute-sanitizer memcheck: 0 errors")[1:] == ["3 error(s)", "missed"]

    # Nothing measured (every result file missing): "not measured", and the steps that should
    # have written them fail.
    for path in ["bench_cuda.json", "bench/results.json", "logs/sanitizer.log"]:
        (good / path).unlink()
    text, status = summary.summary(good, "cuda", dry_run=False)
    assert status == 1 and "**FAIL: bench-cuda, sanitizer, bench.**" in text
    (good / "logs" / "bench-cuda.log").write_text("...\nbench_cuda: needs an NVIDIA GPU\n\n")
    text, status = summary.summary(good, "cuda", dry_run=False)
    assert _table_row(text, "bench-cuda")[4] == (
        "no bench_cuda.json; the log ends: bench_cuda: needs an NVIDIA GPU"
    )
    for target in ("SGEMM 4096", "MLP step", "compute-sanitizer"):
        (row,) = [line for line in text.splitlines() if line.startswith(f"| {target}")]
        assert row.endswith("| not measured |")
    # A sanitizer that cannot watch this GPU at all: skipped with that reason, not 1 error.
    (good / "logs" / "sanitizer.log").write_text(
        "========= Error: Device not supported\n========= ERROR SUMMARY: 1 error\n"
    )
    text, _ = summary.summary(good, "cuda", dry_run=False)
    assert _table_row(text, "sanitizer")[1] == "skipped"
    assert "Device not supported" in _table_row(text, "sanitizer")[4]
