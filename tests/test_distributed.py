"""needle.distributed: the sampler and the single-process fallback here; collectives,
data-parallel training, `needle train --distributed` and failing ranks under `mpirun -n 2`
(tests/distributed/worker.py runs on the ranks). The MPI tests are skipped, with the reason,
where mpirun or mpi4py is missing; CI installs both."""

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import needle as ndl
from needle import distributed as dist, nn
from needle.apps.models import MLPResNet
from needle.apps.trainer import load_checkpoint, read_checkpoint_meta

WORKER = Path(__file__).resolve().parent / "distributed" / "worker.py"
PACKAGE_ROOT = Path(ndl.__file__).resolve().parents[1]  # so the ranks import this needle
TIMEOUT = 120  # seconds; a hung job fails the test instead of the whole run


def _mpi_missing():
    if shutil.which("mpirun") is None:
        return "mpirun not found (Debian: apt-get install openmpi-bin libopenmpi-dev)"
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py not installed (pip install '.[distributed]')"
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=str(_mpi_missing()))


def _environment(*path_first):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [*map(str, path_first), str(PACKAGE_ROOT), env.get("PYTHONPATH", "")]
    )
    # Open MPI refuses root unless told; one thread per rank on a 2-core machine.
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMP_NUM_THREADS="1",
        NEEDLE_NUM_THREADS="1",
    )
    return env


def run(command, env=None):
    """Run `command` in its own process group; on timeout kill the whole group (mpirun and
    its ranks) and fail."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or _environment(),
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{' '.join(map(str, command))} still running after {TIMEOUT} s (hung)")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def mpirun(*args):
    """`mpirun ARGS`, with Open MPI's flags for more ranks than cores and for root."""
    version = subprocess.run(["mpirun", "--version"], capture_output=True, text=True).stdout
    flags = []
    if "Open MPI" in version or "OpenRTE" in version:
        flags.append("--oversubscribe")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            flags.append("--allow-run-as-root")
    return run(["mpirun", *flags, *map(str, args)])


def worker(*args):
    return [sys.executable, str(WORKER), *map(str, args)]


def ranks(out, n=2):
    return [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in range(n)]


def needle_train(out, *extra):
    """`needle train --distributed`: 2 short epochs into `out`, then `extra`."""
    return [
        sys.executable,
        "-m",
        "needle",
        "train",
        "--distributed",
        "--epochs",
        "2",
        "--max-batches",
        "3",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


# ---- the sampler ----------------------------------------------------------------------------
def shards(n, world, epoch=0, **kwargs):
    samplers = [
        dist.DistributedSampler(range(n), num_replicas=world, rank=r, **kwargs)
        for r in range(world)
    ]
    for s in samplers:
        s.set_epoch(epoch)
    return [list(s) for s in samplers], [len(s) for s in samplers]


@pytest.mark.parametrize("n", [0, 1, 10, 11, 97])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_sampler_shards_are_disjoint_and_cover_every_sample_once(n, world):
    parts, lengths = shards(n, world, epoch=3)
    assert lengths == [len(p) for p in parts]
    assert sorted(i for p in parts for i in p) == list(range(n))
    assert max(lengths) - min(lengths) <= 1


def test_sampler_same_permutation_on_every_rank_new_each_epoch():
    first, _ = shards(20, 2, epoch=0, seed=7)
    again, _ = shards(20, 2, epoch=0, seed=7)
    later, _ = shards(20, 2, epoch=1, seed=7)
    assert first == again and first != later
    assert shards(6, 2, shuffle=False)[0] == [[0, 2, 4], [1, 3, 5]]
    # Rank r's k-th index is element world*k + r of the one permutation all ranks share.
    order = np.random.default_rng((7, 0)).permutation(20)
    assert first == [order[0::2].tolist(), order[1::2].tolist()]


def test_sampler_drop_last_gives_every_rank_the_same_length():
    parts, lengths = shards(11, 3, drop_last=True)
    assert lengths == [3, 3, 3] and len({i for p in parts for i in p}) == 9
    with pytest.raises(ValueError, match="rank 2 is not in"):
        dist.DistributedSampler(range(4), num_replicas=2, rank=2)


def test_rank_batches_of_b_make_up_the_single_process_batches_of_2b():
    ids = np.arange(30, dtype=np.float32)
    data = ndl.data.NDArrayDataset(ids)
    loaders = [
        ndl.data.DataLoader(
            data, b, sampler=dist.DistributedSampler(data, num_replicas=world, rank=r, seed=1)
        )
        for world, b in ((2, 4), (1, 8))
        for r in range(world)
    ]
    rank0, rank1, single = ([batch[0].numpy().tolist() for batch in loader] for loader in loaders)
    assert len(loaders[0]) == len(loaders[1]) == len(loaders[2]) == 4
    for a, b, whole in zip(rank0, rank1, single):
        assert sorted(a + b) == sorted(whole)


def test_dataloader_sampler_excludes_shuffle():
    with pytest.raises(ValueError, match="mutually exclusive"):
        ndl.data.DataLoader(ndl.data.NDArrayDataset(np.zeros(4)), 2, shuffle=True, sampler=[0, 1])
    loader = ndl.data.DataLoader(ndl.data.NDArrayDataset(np.arange(5.0)), 2, sampler=[4, 0, 2])
    assert len(loader) == 2
    assert [b[0].numpy().tolist() for b in loader] == [[4.0, 0.0], [2.0]]


# ---- one process: every call works and changes nothing --------------------------------------
@pytest.fixture
def single_process(monkeypatch):
    """needle.distributed as without mpi4py (this pytest process does not start MPI)."""
    monkeypatch.setattr(dist, "_initialized", True)
    monkeypatch.setattr(dist, "_comm", None)
    for name in dist._LAUNCHER_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_single_process_collectives_return_their_input(single_process, device):
    assert dist.init() == 1 and dist.rank() == 0 and dist.world_size() == 1
    assert dist.is_primary()
    dist.barrier()
    t = ndl.Tensor(np.arange(6.0).reshape(2, 3), device=device)
    for op in ("mean", "sum", "max", "min"):
        out = dist.all_reduce(t, op=op)
        assert isinstance(out, ndl.Tensor) and out.device == device and out.dtype == "float32"
        np.testing.assert_array_equal(out.numpy(), t.numpy())
    nd = t.realize_cached_data()
    assert isinstance(dist.all_reduce(nd), ndl.NDArray)
    assert dist.all_reduce(3, op="sum") == 3 and dist.all_reduce(2.5) == 2.5
    with pytest.raises(ValueError, match="op must be one of"):
        dist.all_reduce(t, op="avg")
    model = nn.Linear(3, 2, device=device)
    model(t).sum().backward()
    grad = model.weight.grad.numpy()
    dist.allreduce_gradients(model)
    dist.broadcast_parameters(model)
    dist.allreduce_buffers(model)
    np.testing.assert_array_equal(model.weight.grad.numpy(), grad)


def test_checksum_follows_the_parameters(single_process):
    model = nn.Linear(3, 2)
    checksum = dist.parameter_checksum(model)
    assert len(checksum) == 16 and checksum == dist.parameter_checksum(model)
    model.bias.data = model.bias.detach() + 1.0
    assert dist.parameter_checksum(model) != checksum


def test_launched_ranks_without_mpi_say_how_to_install(single_process, monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match=r"apt-get install openmpi-bin.*needle\[distributed\]"):
        dist.world_size()


@pytest.fixture
def no_mpi4py(tmp_path):
    """A PYTHONPATH entry whose `mpi4py` fails to import, as where it is not installed."""
    stub = tmp_path / "stub" / "mpi4py"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('No module named mpi4py (stub)')\n")
    env = _environment(stub.parent)
    for name in dist._LAUNCHER_SIZE_VARIABLES:
        env.pop(name, None)
    return env


def test_without_mpi4py_init_is_a_single_process(no_mpi4py):
    code = (
        "import needle.distributed as d; print(d.init(), d.rank(), d.available(), "
        "d.all_reduce(4, op='sum'))"
    )
    result = run([sys.executable, "-c", code], env=no_mpi4py)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "0", "False", "4"]


def test_needle_train_distributed_without_mpi4py_is_a_clear_message(no_mpi4py, tmp_path):
    result = run(needle_train(tmp_path / "out"), env=no_mpi4py)
    assert result.returncode == 1
    assert "needle train --distributed: needle.distributed: MPI is not available" in result.stderr
    assert "openmpi-bin" in result.stderr and "Traceback" not in result.stderr


# ---- under mpirun ----------------------------------------------------------------------------
@needs_mpi
def test_collectives_on_two_ranks(tmp_path):
    result = mpirun("-n", 2, *worker("collectives", tmp_path))
    assert result.returncode == 0, result.stderr
    r0, r1 = ranks(tmp_path)
    assert (r0["world"], r1["world"], r0["primary"], r1["primary"]) == (2, 2, True, False)
    for r in (r0, r1):
        assert r["tensor_mean"] == [[1.5] * 3] * 2 and r["tensor_sum"] == [[3.0] * 3] * 2
        assert (r["tensor_type"], r["tensor_dtype"]) == ("Tensor", "float32")
        assert r["ndarray_max"] == [0.0, 2.0, 4.0, 6.0] and r["ndarray_type"] == "NDArray"
        assert r["numpy_min"] == [0, -1] and r["int_sum"] == 3 and r["float_mean"] == 0.5
        assert r["running_mean"] == [0.5] * 3
    assert r1["input_unchanged"] == [[2.0] * 3] * 2
    # Different initial weights, then rank 0's everywhere after broadcast_parameters.
    assert r0["checksum_before"] != r1["checksum_before"]
    assert r0["checksum_after_broadcast"] == r1["checksum_after_broadcast"] == r0["checksum_before"]
    assert sorted(r0["sampler"] + r1["sampler"]) == list(range(11))
    assert (r0["sampler_len"], r1["sampler_len"]) == (6, 5)


@needs_mpi
def test_two_ranks_with_batch_b_train_as_one_process_with_batch_2b(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir(), one.mkdir()
    result = mpirun("-n", 2, *worker("train", two, "--batch", 8))
    assert result.returncode == 0, result.stderr
    result = run(worker("train", one, "--batch", 16))
    assert result.returncode == 0, result.stderr
    r0, r1 = ranks(two)
    (single,) = ranks(one, n=1)
    assert r0["checksum"] == r1["checksum"]  # bit-identical parameters on the ranks
    assert r0["metrics"] == r1["metrics"] and r0["steps"] == single["steps"] == 5
    np.testing.assert_allclose(r0["metrics"], single["metrics"], rtol=1e-5)
    with (
        np.load(two / "rank0.npz") as a,
        np.load(two / "rank1.npz") as b,
        np.load(one / "rank0.npz") as c,
    ):
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_allclose(a[key], c[key], rtol=1e-5, atol=1e-6)


@needs_mpi
def test_a_failing_rank_ends_the_job_instead_of_hanging(tmp_path):
    result = mpirun("-n", 2, *worker("fail", tmp_path))
    assert result.returncode != 0
    assert "simulated failure on rank 1" in result.stderr
    assert "rank 1 raised RuntimeError; aborting all 2 ranks" in result.stderr
    assert not (tmp_path / "rank0.json").exists()


@needs_mpi
def test_needle_train_distributed(tmp_path):
    result = mpirun("-n", 2, *needle_train(tmp_path))
    assert result.returncode == 0, result.stderr
    checksums = [
        line for line in result.stdout.splitlines() if line.startswith("parameter checksum: ")
    ]
    assert len(checksums) == 2 and checksums[0] == checksums[1], result.stdout
    # Only rank 0 prints progress and writes files.
    assert result.stdout.count("done: validation accuracy") == 1
    assert "2 ranks x batch 100" in result.stdout
    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    model = MLPResNet(784, hidden_dim=256)
    load_checkpoint(str(tmp_path / "checkpoint.npz"), model)
    assert f"parameter checksum: {dist.parameter_checksum(model)}" == checksums[0]


@needs_mpi
def test_needle_train_rank_that_stops_ends_the_job(tmp_path):
    # MPMD launch: rank 1 gets a bad --data-dir and stops while rank 0 waits in a collective.
    result = mpirun(
        "-n",
        1,
        *needle_train(tmp_path),
        ":",
        "-n",
        1,
        *needle_train(tmp_path, "--data-dir", tmp_path / "missing"),
    )
    assert result.returncode != 0
    assert "rank 1 stopped: needle train: --data-dir" in result.stderr


PTB = ndl.data.find_data_dir("ptb", "ptb.valid.txt")  # under $NEEDLE_DATA_DIR, if set


@needs_mpi
@pytest.mark.skipif(PTB is None, reason="no PTB text: set NEEDLE_DATA_DIR (a folder with ptb/)")
def test_needle_train_distributed_language_model(tmp_path):
    # Each rank takes its own streams of the batchified corpus.
    lines = (PTB / "ptb.valid.txt").read_text().splitlines()
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "train.txt").write_text("\n".join(lines[:400]) + "\n")
    (tmp_path / "ptb" / "test.txt").write_text("\n".join(lines[400:500]) + "\n")
    result = mpirun(
        "-n",
        2,
        *needle_train(tmp_path / "out", "--model", "lstm-lm", "--data-dir", tmp_path / "ptb"),
    )
    assert result.returncode == 0, result.stderr
    checksums = [
        line for line in result.stdout.splitlines() if line.startswith("parameter checksum: ")
    ]
    assert len(checksums) == 2 and checksums[0] == checksums[1], result.stdout
    assert "2 ranks x batch 20" in result.stdout


# ---- a rank interrupted or frozen mid-training -----------------------------------------------
RANK_LAUNCHER = Path(__file__).resolve().parent / "distributed" / "needle_rank.py"
STOP_BOUND = 60  # seconds from the signal to the end of the job; longer is a hang


def _signal_mid_training(tmp_path, rank, signum, *extra):
    """Start a long `needle train --distributed` on 2 ranks, send `signum` to `rank` once rank 0
    has saved its first epoch, and return the finished job (failing if it outlives STOP_BOUND)."""
    out, pids = tmp_path / "out", tmp_path / "pids"
    pids.mkdir()
    flags = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    command = ["mpirun", *flags, "-n", "2", sys.executable, str(RANK_LAUNCHER), str(pids)]
    command += needle_train(out, *extra)[3:]  # `train --distributed ...`
    command[command.index("--epochs") + 1] = "1000"
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(),
        start_new_session=True,
    )
    pid = None
    try:
        try:
            deadline = time.monotonic() + TIMEOUT
            while not ((out / "checkpoint.npz").exists() and (pids / f"rank{rank}.pid").exists()):
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "no checkpoint after epoch 1"
                time.sleep(0.05)
            pid = int((pids / f"rank{rank}.pid").read_text())
            os.kill(pid, signum)
            started = time.monotonic()
            out_text, err_text = process.communicate(timeout=STOP_BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"the job still ran {STOP_BOUND} s after signal {signum} to rank {rank} (hung)"
            )
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
        if pid is not None:  # a stopped rank that outlived the job
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return process.returncode, out_text, err_text, time.monotonic() - started


@needs_mpi
@pytest.mark.parametrize("rank", [0, 1])
def test_needle_train_interrupted_rank_ends_the_job(tmp_path, rank):
    # The interrupted rank stops while the other waits for it in a collective; rank 0 saves.
    code, _, err, seconds = _signal_mid_training(tmp_path, rank, signal.SIGINT)
    assert code != 0 and f"rank {rank} interrupted; aborting all 2 ranks" in err, err
    assert seconds < STOP_BOUND
    meta = read_checkpoint_meta(str(tmp_path / "out" / "checkpoint.npz"))
    assert meta["epoch"] >= 1 and meta.get("interrupted", False) == (rank == 0)


@needs_mpi
def test_needle_train_collective_timeout_ends_a_job_with_a_frozen_rank(tmp_path):
    code, _, err, seconds = _signal_mid_training(
        tmp_path, 1, signal.SIGSTOP, "--collective-timeout", "3"
    )
    assert code != 0, err
    assert (
        "needle train: rank 0: a collective waited more than 3 s (a rank froze or died); aborting"
        in err
    )
    assert 3 <= seconds < STOP_BOUND


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan", "soon"])
def test_collective_timeout_must_be_positive_finite_seconds(value, capsys):
    from needle.apps.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["train", "--distributed", "--collective-timeout", value])
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--collective-timeout" in err, err


def test_collective_timeout_needs_distributed():
    from needle.apps.cli import main

    with pytest.raises(SystemExit, match="--collective-timeout applies only with --distributed"):
        main(["train", "--collective-timeout", "5"])
