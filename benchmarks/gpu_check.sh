#!/usr/bin/env bash
# The first run of needle's CUDA backend on a GPU machine, in one command and under 8 minutes:
# record the machine, build needle with its CUDA backend, run the device tests on the GPU,
# run the GPU tests under compute-sanitizer's memcheck, benchmark against PyTorch (SGEMM against
# cuBLAS with TF32 off, training steps, `needle bench`), run the device tests on WebGPU when a
# Vulkan driver for the GPU is there, and write summary.md: each step's status and the numbers
# against issue 21's targets.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]            on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run [OUT_DIR]  the same steps without a GPU (1-3 min):
#                                                     cpu stands in for cuda, at small sizes
# Options: --dry-run (or GPU_CHECK_DRY_RUN=1); --no-install (use the needle already installed,
# after checking that it is this checkout's); --budget SECONDS (the whole run, default 460);
# --steps a,b,... (only these, by the names of steps.tsv; machine and install always run).
# OUT_DIR: the argument, else $OUT, else gpu_check_out. Python: $PYTHON, else .venv/bin/python,
# else python3 (the one with PyTorch on the GPU machines this was written for).
#
# It fetches nothing (the machine may have no network): the build and the tests use what is
# installed, and what is missing is listed in machine.json and summary.md instead of stopping
# the run. Each step has its own time limit and every step's is cut to what is left of the
# budget, so one hang cannot eat the run; a step that fails does not stop the next.
# Exit status: 1 when a step failed (a missed performance target is reported in summary.md, not
# here), 2 for bad arguments, else 0.
#
# OUT_DIR: summary.md; steps.tsv (one row per step: name, exit status or "skipped", seconds,
# limit, note); machine.json; logs/STEP.log; tests/STEP.xml (pytest's JUnit files);
# bench_cuda.json (SGEMM sweep and MLP steps); bench_half_gemm.json (bench_matmul.py: the
# 16-bit GEMMs); bench/ (needle bench: report.md, results.json).
set -u

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print } /^set -u/ { exit }' "$0"; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN="${GPU_CHECK_DRY_RUN:-0}"
NO_INSTALL=0
STEPS="" # empty: every step
BUDGET=460 # 8 minutes less 20 s: a stopped step's 10 s to exit, the summary, the copying
OUT_DIR="${OUT:-gpu_check_out}"
while (($#)); do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --no-install) NO_INSTALL=1 ;;
        --steps)
            [[ -n "${2:-}" ]] || { echo "gpu_check: --steps needs a list" >&2; exit 2; }
            STEPS=",$2,"
            shift
            ;;
        --budget)
            [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "gpu_check: --budget needs seconds" >&2; exit 2; }
            BUDGET="$2"
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) OUT_DIR="$1" ;;
    esac
    shift
done

# ---- what the real run and the dry run measure -------------------------------------------
# The dry run takes the same code paths with cpu in place of cuda and smaller sizes: this
# block is the only difference between the two.
if [[ "$DRY_RUN" == 1 ]]; then
    DEV=cpu
    TEST_PATHS=(tests/test_ndarray.py tests/test_nn.py tests/backends/test_conformance.py)
    WEBGPU_PATHS=(tests/test_webgpu.py)
    WEBGPU_ADAPTERS=any # lavapipe (a CPU) stands in for the GPU's Vulkan driver
    SGEMM_SIZES=64,128
    HALF_GEMM_SIZES=64
    MLP_BATCHES=16
    BENCH_CUDA_REPEATS=1
    BENCH_PRESET=--tiny # needle bench's test preset: seconds
else
    DEV=cuda
    # Every test that takes a device (ops, ndarray, nn, optim, autograd, the conformance suite,
    # ...) and test_cuda.py's GPU tests; TEST_K below picks them.
    TEST_PATHS=(tests)
    # WebGPU is no target of issue 21: the conformance suite and a few suites, not all of them.
    WEBGPU_PATHS=(tests/backends/test_conformance.py tests/test_webgpu.py tests/test_ndarray.py
        tests/test_nn.py tests/test_amp.py)
    WEBGPU_ADAPTERS=gpu
    SGEMM_SIZES=512,1024,2048,4096
    HALF_GEMM_SIZES=1024,4096
    MLP_BATCHES=128,1024
    BENCH_CUDA_REPEATS=10 # bench_cuda.py's own
    BENCH_PRESET=--quick
fi
# The tests whose id names the device, and test_cuda.py's GPU tests and build checks. Not the
# CUDA emulation (test_cuda.py's other tests, test_ops_emulated.py): it runs on the CPU, in CI,
# and building it costs 20 s of g++.
TEST_K="($DEV and not emulat and not test_cuda.py) or test_gpu_ or built_where_nvcc or fresh_process"
# Under memcheck every kernel launch and copy is checked, several times slower, so it runs a
# subset that fits its limit: the conformance cases in float32 (what training runs) and uint8
# (16 elements per vector load, where an overrun would show first), on every view shape the
# suite has (strided, offset, broadcast, empty, 7- to 10-d), and test_cuda.py's GPU tests
# (large sizes, the memory pool, a training loop). Not the out-of-memory test: the cudaMalloc
# it makes fail on purpose would count as a sanitizer error.
SANITIZER_PATHS=(tests/backends/test_conformance.py tests/test_cuda.py)
# Nor the training loop's flat-memory test: under memcheck the pool's used bytes grew from 52
# to 90 MB over its 200 steps (on an H200; flat without the sanitizer). The conformance cases
# are test_conformance.py's: test_cuda.py's emulated fault cases took 65 of 116 s there.
SANITIZER_K="(test_conformance.py and cuda and (float32 or uint8)) or (test_gpu_ and not out_of_memory and not memory_is_flat)"

# ---- set-up ------------------------------------------------------------------------------
# What an earlier run left in the folder would pass for this run's results: removed, and only
# that (the folder may hold other things).
rm -rf "${OUT_DIR:?}"/{logs,tests,bench,summary.md,steps.tsv,machine.json,bench_cuda.json,bench_half_gemm.json}
mkdir -p "$OUT_DIR/logs" "$OUT_DIR/tests" || exit 2
OUT_DIR="$(cd "$OUT_DIR" && pwd)" # absolute: the steps run from the repository's root
cd "$REPO" || exit 2
: >"$OUT_DIR/steps.tsv"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
# Mesa's Vulkan drivers write an error on stderr without XDG_RUNTIME_DIR, which the tests of
# one-line error messages would see (as in .ci/run).
if [[ -z "${XDG_RUNTIME_DIR:-}" ]]; then
    XDG_RUNTIME_DIR="$(mktemp -d)" && chmod 700 "$XDG_RUNTIME_DIR"
    export XDG_RUNTIME_DIR
fi
export PYTHONUNBUFFERED=1
DEADLINE=$((SECONDS + BUDGET))
MIN_STEP=20 # a step with less time left than this is skipped, not started
WEBGPU_ADAPTER=""
WEBGPU_REASON="not looked for"

record() { # name, exit status or "skipped", seconds, limit, note: a row of steps.tsv
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5//$'\t'/ }" >>"$OUT_DIR/steps.tsv"
}

# run_step NAME LIMIT FUNCTION: FUNCTION's output goes to logs/NAME.log; its commands run
# through `within`, which stops them at the step's deadline (LIMIT seconds, or what is left
# of the budget). FUNCTION sets STEP_SKIP to skip with a reason, STEP_NOTE to add a note;
# STEP_LOG is its log.
run_step() {
    local name="$1" limit="$2" fn="$3" left=$((DEADLINE - SECONDS)) start=$SECONDS rc
    if [[ -n "$STEPS" && "$STEPS" != *",$name,"* && "$name" != machine && "$name" != install ]]; then
        record "$name" skipped 0 "$limit" "not in --steps"
        return
    fi
    if ((left < MIN_STEP)); then
        record "$name" skipped 0 "$limit" "the ${BUDGET} s budget was spent before it"
        echo "== $name: skipped, the budget is spent"
        return
    fi
    ((limit > left)) && limit=$left
    STEP_DEADLINE=$((SECONDS + limit)) STEP_SKIP="" STEP_NOTE="" STEP_LOG="$OUT_DIR/logs/$name.log"
    echo "== $name (limit ${limit} s, log logs/$name.log)"
    "$fn" >"$STEP_LOG" 2>&1
    rc=$?
    if [[ -n "$STEP_SKIP" ]]; then
        record "$name" skipped $((SECONDS - start)) "$limit" "$STEP_SKIP"
        echo "   skipped: $STEP_SKIP"
    else
        record "$name" "$rc" $((SECONDS - start)) "$limit" "$STEP_NOTE"
        echo "   exit status $rc in $((SECONDS - start)) s${STEP_NOTE:+: $STEP_NOTE}"
    fi
}

# Runs "$@" until the step's deadline; 124 when it is stopped there. SIGINT, not SIGTERM: pytest
# then still writes its JUnit file (the tests that ran before the limit count), needle bench
# and the build stop as after Ctrl-C; SIGKILL 10 s later if that did not stop it.
within() {
    local left=$((STEP_DEADLINE - SECONDS))
    ((left > 0)) || return 124
    timeout -s INT -k 10 "$left" "$@"
}

# pytest-xdist, where installed (the GPU machines' image has it; needle does not need it),
# spreads the tests over 12 processes (2 on a small machine), each with its own CUDA context:
# the suite's ~3,900 GPU cases are mostly small, so their time is Python's, not the GPU's (59 s
# in 8 processes, 63 in 12, on an H200 machine's 16 cores).
XDIST=()
pytest_on() { # DEVICE NAME PATH... -- the device tests of DEVICE, JUnit in tests/NAME.xml
    local device="$1" name="$2"
    shift 2
    within env NEEDLE_TEST_DEVICES="$device" "$PYTHON" -m pytest -q -p no:cacheprovider -rfE \
        "${XDIST[@]}" --junitxml "$OUT_DIR/tests/$name.xml" "$@"
}

# ---- the steps ---------------------------------------------------------------------------
step_machine() {
    local status=0
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); mode: $([[ $DRY_RUN == 1 ]] && echo dry-run || echo gpu)"
    uname -a
    echo "--- nvidia-smi"
    if command -v nvidia-smi >/dev/null; then within nvidia-smi; else echo "nvidia-smi: not found"; fi
    echo "--- nvcc, compute-sanitizer"
    for tool in nvcc compute-sanitizer; do
        local path
        path="$(command -v "$tool" || ls "${CUDA_HOME:-/usr/local/cuda}/bin/$tool" 2>/dev/null)"
        if [[ -n "$path" ]]; then within "$path" --version; else echo "$tool: not found"; fi
    done
    echo "--- git"
    git rev-parse HEAD 2>&1 && git status --short 2>&1 | head -20
    echo "--- python ($PYTHON) and packages"
    within "$PYTHON" benchmarks/gpu_check_summary.py machine "$OUT_DIR/machine.json" || status=$?
    if "$PYTHON" -c 'import xdist' 2>/dev/null; then XDIST=(-n "$(($(nproc) > 8 ? 12 : 2))"); fi
    echo "pytest-xdist: ${XDIST[*]:-not installed, the tests run in one process}"
    echo "--- WebGPU"
    find_webgpu_adapter
    echo "webgpu: ${WEBGPU_ADAPTER:-none: $WEBGPU_REASON}"
    return $status
}

# A Vulkan adapter for the GPU through wgpu (in the dry run any Vulkan adapter, lavapipe's
# too): its name in WEBGPU_ADAPTER and NEEDLE_WEBGPU_ADAPTER, which selects it for every later
# step, else the reason in WEBGPU_REASON.
find_webgpu_adapter() {
    # GPU machines whose driver is mounted from the host keep its Vulkan manifest here; naming
    # it also hides the CPU drivers (lavapipe) from the real run.
    local icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    if [[ "$DRY_RUN" != 1 && -f "$icd" && -z "${VK_ICD_FILENAMES:-}${VK_DRIVER_FILES:-}" ]]; then
        export VK_DRIVER_FILES="$icd"
    fi
    local found
    found="$(within "$PYTHON" - "$WEBGPU_ADAPTERS" <<'EOF' 2>/dev/null | tail -n 1
import sys

try:
    import wgpu
except ImportError:
    print("none: wgpu is not installed (pip install 'needle[webgpu]')")
    sys.exit()
adapters = [a.info for a in wgpu.gpu.enumerate_adapters_sync()]
names = [f"{i['device']} ({i['backend_type']}, {i['adapter_type']})" for i in adapters]
for info, name in zip(adapters, names):
    if info["backend_type"] == "Vulkan" and (sys.argv[1] == "any" or info["adapter_type"] != "CPU"):
        print(f"adapter: {name}")
        sys.exit()
print(f"none: no Vulkan adapter on a GPU (wgpu found: {'; '.join(names) or 'none'})")
EOF
    )"
    case "$found" in
        "adapter: "*)
            WEBGPU_ADAPTER="${found#adapter: }"
            export NEEDLE_WEBGPU_ADAPTER="$WEBGPU_ADAPTER" # needle's webgpu device takes it
            ;;
        "none: "*) WEBGPU_REASON="${found#none: }" ;;
        *) WEBGPU_REASON="the adapter query failed (no Python, or wgpu crashed)" ;;
    esac
}

step_install() {
    if [[ "$NO_INSTALL" == 1 ]]; then
        STEP_NOTE="--no-install: the installed needle"
    else
        local missing
        missing="$("$PYTHON" -c 'import importlib.util as u, sys
print(" ".join(m for m in sys.argv[1:] if u.find_spec(m) is None))' scikit_build_core nanobind)"
        command -v cmake >/dev/null || "$PYTHON" -c 'import cmake' 2>/dev/null || missing+=" cmake"
        missing="${missing# }"
        if [[ -n "$missing" ]]; then
            STEP_NOTE="cannot build, missing: $missing"
            return 1
        fi
        # README's editable install, with no build isolation and no index: the build tools
        # and needle's dependencies come from this environment, nothing is downloaded.
        # NEEDLE_CUDA=ON builds the CUDA backend (CMakeLists.txt: sm_90 code for Hopper and
        # compute_75 PTX for other GPUs, NEEDLE_CUDA_ARCHITECTURES overrides).
        NEEDLE_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" within "$PYTHON" -m pip install \
            --no-build-isolation --no-deps --no-index -v -e . || return
        # CMakeLists.txt's line on the CUDA backend: built (for which architectures, with which
        # nvcc) or not (no CUDA compiler found).
        STEP_NOTE="$(grep -o 'needle: [a-z ]*CUDA.*' "$STEP_LOG" | head -n 1)"
    fi
    # The needle that imports must be this checkout's, with the device under test enabled.
    within "$PYTHON" - "$DEV" "$REPO" <<'EOF'
import os
import sys

import needle as ndl

device = getattr(ndl, sys.argv[1])()
print(f"needle from {ndl.__file__}")
print(f"{device.name}: {'enabled' if device.enabled() else 'disabled: ' + str(device.reason)}")
if device.name == "cuda" and device.enabled():
    print(device.mod.device_info())
ours = os.path.realpath(ndl.__file__).startswith(os.path.realpath(sys.argv[2]))
sys.exit(0 if device.enabled() and ours else f"not this checkout's needle, or {sys.argv[1]} off")
EOF
}

step_tests() {
    pytest_on "$DEV" tests "${TEST_PATHS[@]}" -k "$TEST_K"
}

step_bench_cuda() {
    # bench_cuda.py: SGEMM sweep against torch.matmul with TF32 off (cuBLAS's FP32 path) and
    # the MLP step against PyTorch, through needle.apps.bench's harness.
    within "$PYTHON" benchmarks/bench_cuda.py --device "$DEV" --sizes "$SGEMM_SIZES" \
        --batches "$MLP_BATCHES" --repeats "$BENCH_CUDA_REPEATS" --no-progress \
        --json-out "$OUT_DIR/bench_cuda.json"
}

step_bench_half_gemm() {
    # The 16-bit GEMMs (issue 18): needle's bfloat16 and float16 matmul, float32 accumulation,
    # against its float32 kernel and torch.matmul in the same dtype. No pause between the
    # libraries (it lets CPU BLAS workers go idle): with 9 columns its 0.2 s a block made one
    # case take over 18 s.
    local dtypes=float32,bfloat16,float16
    [[ "$DEV" == cpu ]] && dtypes=float32,bfloat16 # torch's CPU float16 GEMM crawls
    within "$PYTHON" benchmarks/bench_matmul.py --device "$DEV" --dtypes "$dtypes" \
        --sizes "$HALF_GEMM_SIZES" --max-time-per-case 3 --pause 0 --repeats 3 \
        --json-out "$OUT_DIR/bench_half_gemm.json"
}

step_sanitizer() {
    local sanitizer
    sanitizer="$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" 2>/dev/null)"
    if [[ -z "$sanitizer" ]]; then
        STEP_SKIP="compute-sanitizer not found"
        return 0
    fi
    within env NEEDLE_TEST_DEVICES="$DEV" "$sanitizer" --tool memcheck "$PYTHON" -m pytest -q \
        -p no:cacheprovider -rfE --junitxml "$OUT_DIR/tests/sanitizer.xml" \
        "${SANITIZER_PATHS[@]}" -k "$SANITIZER_K"
}

step_bench() {
    # needle bench on the device under test and WebGPU when it is on the GPU, each against
    # PyTorch on the same hardware: MLP, ResNet-9 and LSTM steps among its workloads. Not the
    # CPU (benchmarks/RESULTS.md has it): with cpu too, --quick outran 142 s on an H200 machine.
    local devices="$DEV"
    [[ -n "$WEBGPU_ADAPTER" ]] && devices+=",webgpu"
    STEP_NOTE="--devices $devices"
    within "$PYTHON" -m needle bench "$BENCH_PRESET" --devices "$devices" --no-progress \
        --out "$OUT_DIR/bench"
}

step_webgpu() {
    if [[ -z "$WEBGPU_ADAPTER" ]]; then
        STEP_SKIP="$WEBGPU_REASON"
        return 0
    fi
    STEP_NOTE="adapter $WEBGPU_ADAPTER"
    # One process makes a device first: on an H200 12 test processes were each still inside
    # wgpu's device request after 120 s. needle gives the request 60 s, then says why.
    local enabled
    enabled="$(within "$PYTHON" -c 'import needle as ndl
d = ndl.webgpu()
print("on" if d.enabled() else f"off: {d.reason}")' 2>&1 | tail -n 1)"
    if [[ "$enabled" != on ]]; then
        STEP_NOTE+="; ndl.webgpu() ${enabled:-did not answer}"
        return 1
    fi
    pytest_on webgpu tests-webgpu "${WEBGPU_PATHS[@]}" -k "webgpu and not emulat"
}

# ---- the run -----------------------------------------------------------------------------
echo "gpu_check: $([[ $DRY_RUN == 1 ]] && echo "dry run on cpu" || echo "on $DEV"), budget ${BUDGET} s, python $PYTHON, writing to $OUT_DIR"
# In the order of what matters most when the budget runs short: the targets (SGEMM, MLP,
# sanitizer) before needle bench's other workloads, WebGPU (no target) last.
run_step machine 60 step_machine
run_step install 240 step_install
run_step tests 240 step_tests
run_step bench-cuda 90 step_bench_cuda
run_step sanitizer 120 step_sanitizer
run_step bench-half-gemm 60 step_bench_half_gemm
run_step bench 150 step_bench
run_step tests-webgpu 120 step_webgpu

summary_args=(summary "$OUT_DIR" --device "$DEV")
[[ "$DRY_RUN" == 1 ]] && summary_args+=(--dry-run)
echo "== summary ($SECONDS s in all)"
if ! timeout 60 "$PYTHON" benchmarks/gpu_check_summary.py "${summary_args[@]}"; then
    [[ -s "$OUT_DIR/summary.md" ]] || cat "$OUT_DIR/steps.tsv" # no Python: the raw record
    exit 1
fi
