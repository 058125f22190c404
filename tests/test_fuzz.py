"""Fuzz the public NDArray/Tensor API against NumPy (issue 13).

``--fuzz-cases N`` random cases (default 20,000) of tests/fuzz_cases.py, seed SEED (or
NEEDLE_FUZZ_SEED), run in chunks by worker subprocesses, a few at a time: a case that
crashes its worker (a signal, an abort) or hangs it is a failure that names the case,
and the rest of its chunk runs on in a fresh worker. Reproduce a case with

    python tests/fuzz_cases.py SEED I I+1 -v

Long runs: ``pytest tests/test_fuzz.py --fuzz-cases 1000000`` (and NEEDLE_FUZZ_SEED=...).
"""

import os
import subprocess
import sys
from pathlib import Path

import fuzz_cases

SEED = int(os.environ.get("NEEDLE_FUZZ_SEED", "13"))
CHUNK = 2500  # cases per worker process: its start-up (~0.3 s) stays small
HANG_S = 300  # a chunk running this long hangs (one takes ~2 s)
WORKERS = max(1, min(os.cpu_count() or 1, 4))
SCRIPT = Path(fuzz_cases.__file__)


def _run_chunk(seed: int, start: int, stop: int) -> tuple[list[str], list[str]]:
    """(mismatches, crashes) of cases [start, stop); a crash restarts after its case."""
    mismatches, crashes = [], []
    while start < stop:
        env = dict(os.environ, NEEDLE_NUM_THREADS="1")
        command = [sys.executable, str(SCRIPT), str(seed), str(start), str(stop)]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=HANG_S)
            stdout, stderr, status = proc.stdout, proc.stderr, f"exit {proc.returncode}"
        except subprocess.TimeoutExpired as hang:
            stdout, stderr = (
                v.decode() if isinstance(v, bytes) else v or "" for v in (hang.stdout, hang.stderr)
            )
            status = f"hang (killed after {HANG_S} s)"
        last, done = None, False
        for line in stdout.splitlines():
            if line.startswith("start "):
                last = int(line.split()[1])
            elif line.startswith("mismatch "):
                mismatches.append(line[len("mismatch ") :])
            elif line == "done":
                done = True
        if done and status == "exit 0":
            break
        case = start if last is None else last
        crashes.append(
            f"{case} {fuzz_cases.describe(seed, case)}: worker {status}; "
            f"stderr: {stderr.strip()[-2000:]}"
        )
        start = case + 1
    return mismatches, crashes


def test_fuzz_against_numpy(request):
    from concurrent.futures import ThreadPoolExecutor

    n = request.config.getoption("--fuzz-cases")
    chunks = [(SEED, lo, min(lo + CHUNK, n)) for lo in range(0, n, CHUNK)]
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(lambda c: _run_chunk(*c), chunks))
    mismatches = [m for ms, _ in results for m in ms]
    crashes = [c for _, cs in results for c in cs]
    report = [f"seed {SEED}, {n} cases: {len(crashes)} crashes, {len(mismatches)} mismatches"]
    report += [f"crash {c}" for c in crashes[:20]]
    report += [f"mismatch {m}" for m in mismatches[:20]]
    assert not crashes and not mismatches, "\n".join(report)


def test_a_crash_names_its_case(monkeypatch, tmp_path):
    """A worker that dies or hangs mid-chunk is reported with the case it was running; the
    rest of the chunk still runs."""
    script = tmp_path / "crashing.py"
    script.write_text(
        "import os, sys\n"
        "seed, start, stop = map(int, sys.argv[1:4])\n"
        "for i in range(start, stop):\n"
        "    print(f'start {i}', flush=True)\n"
        "    if i == 3: os.abort()\n"
        "    if i == 5: print('mismatch 5 made up')\n"
        "    if i == 6: import time; time.sleep(60)\n"
        "print('done')\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "SCRIPT", script)
    monkeypatch.setattr(sys.modules[__name__], "HANG_S", 2)
    mismatches, crashes = _run_chunk(SEED, 0, 8)
    assert mismatches == ["5 made up"]
    assert len(crashes) == 2 and crashes[0].startswith(f"3 {fuzz_cases.describe(SEED, 3)}")
    assert crashes[1].startswith("6 ") and "hang" in crashes[1]
