"""The tooling around the code: the native modules' stubs, py.typed and the line budget."""

import ast
import importlib
import importlib.util
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
    conformance = [t for t in ids if "test_conformance" in t]
    assert conformance and all("[numpy" in t for t in conformance)  # cpu_numpy's backend
    assert "cpu_numpy" in params and not params & {"cpu", "cuda", "webgpu", "cuda_emulated"}
    status, _, err = _collect("no_such_device")
    assert status == 4 and "NEEDLE_TEST_DEVICES: no device 'no_such_device'" in err
    disabled = [d.name for d in ndl.all_devices() if not d.enabled()]
    if disabled:  # a device this machine has not got is an error, not zero tests
        status, _, err = _collect(disabled[0])
        assert status == 4 and f"{disabled[0]}() is not enabled" in err
