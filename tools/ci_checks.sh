#!/usr/bin/env bash
# The static checks CI runs before the tests (.ci/run), in order:
#   ruff check          the curated rule set of pyproject.toml [tool.ruff.lint]
#   ruff format --check Python formatting (line length 100)
#   mypy                autograd, ops, backend_ndarray, optim ([tool.mypy] files)
#   clang-format        src/ against .clang-format (--dry-run --Werror)
#   line budget         each layer's size against tools/line_budget.py's table
# Every check runs, and the script fails at the end if any failed, so one run lists them all.
#
#   tools/ci_checks.sh         check
#   tools/ci_checks.sh --fix   rewrite in place, then check: ruff's safe fixes, its unsafe ones
#                              only for mechanical rules (PEP 585/604 annotations, `_`-renaming
#                              of unused loop and unpacked variables, set comprehensions), the
#                              safe fixes again (imports those left unused), ruff format, and
#                              clang-format on src/. What is left needs a person.
#
# The tools come from the test extra (pip install -e ".[test]"); PYTHON picks the interpreter
# whose environment has them (default: .venv/bin/python if present, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
bin="$(dirname "$PYTHON")"
clang_format="$bin/clang-format"
[[ -x "$clang_format" ]] || clang_format="$(command -v clang-format || true)"

mapfile -t native < <(git ls-files 'src/*.cc' 'src/*.h' 'src/*.cu' 'src/*.cuh')

if [[ "${1:-}" == "--fix" ]]; then
    "$PYTHON" -m ruff check --fix --quiet . >/dev/null
    "$PYTHON" -m ruff check --fix --unsafe-fixes --select UP,RUF059,B007,C401 --quiet . >/dev/null
    "$PYTHON" -m ruff check --fix --quiet . >/dev/null
    "$PYTHON" -m ruff format --quiet .
    if [[ -n "$clang_format" ]] && ((${#native[@]})); then "$clang_format" -i "${native[@]}"; fi
fi

failed=()
step() {
    local name="$1"
    shift
    echo "== $name"
    if ! "$@"; then
        failed+=("$name")
    fi
}

step "ruff check" "$PYTHON" -m ruff check --output-format concise .
step "ruff format" "$PYTHON" -m ruff format --check --output-format concise .
step "mypy" "$PYTHON" -m mypy
if ((${#native[@]} == 0)); then
    echo "== clang-format: no files under src/ (not a git checkout?)"
    failed+=("clang-format (no files)")
elif [[ -n "$clang_format" ]]; then
    step "clang-format" "$clang_format" --dry-run --Werror "${native[@]}"
else
    echo "== clang-format: not installed (pip install -e \".[test]\")"
    failed+=("clang-format (missing)")
fi
step "line budget" "$PYTHON" tools/line_budget.py

if ((${#failed[@]})); then
    echo "static checks failed: ${failed[*]}" >&2
    exit 1
fi
echo "static checks passed"
