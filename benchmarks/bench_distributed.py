"""Data-parallel scaling over MPI: training samples/s of `needle train`'s MLP-ResNet with 1 and
2 ranks on this machine, each rank with one backend thread.

The script launches itself under `mpirun` once per configuration and prints a table:

    python benchmarks/bench_distributed.py [--batch 128] [--steps 60] [--repeats 3] [--ranks 1 2]

Two ways to count: per-rank batch fixed (weak scaling, what `needle train --distributed` does:
the global batch grows with the ranks) and global batch fixed (strong scaling: each rank gets
batch/ranks). Samples/s counts the samples of all ranks per second of wall time over the timed
steps, the best of --repeats launches (other load only slows a run down). "allreduce" is the
time per step in allreduce_gradients (packing, MPI, unpacking, and waiting for the slowest
rank); "alone" is the same call timed with the ranks already in step. The steps are
needle.apps.trainer.Trainer's, with a hook that times the gradient averaging; thread pinning
and the machine description come from needle.apps.bench.harness.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

from needle.apps.bench import harness


class TimedAllreduce:
    """Trainer hook: allreduce_gradients after every backward, timed."""

    def __init__(self, module):
        self.module, self.seconds = module, 0.0

    def after_backward(self, trainer) -> None:
        from needle import distributed

        start = time.perf_counter()
        distributed.allreduce_gradients(self.module)
        self.seconds += time.perf_counter() - start


def worker(args) -> None:
    """One rank: time `--steps` training steps after `--warmup` untimed ones."""
    import needle as ndl
    from needle import data, distributed, nn, optim
    from needle.apps.models import MLPResNet
    from needle.apps.trainer import Trainer

    distributed.init()
    rank, world = distributed.rank(), distributed.world_size()
    device = ndl.cpu() if ndl.cpu().enabled() else ndl.cpu_numpy()
    shipped = data.shipped_data_dir()
    dataset = data.MNISTDataset(
        str(shipped / "t10k-images-idx3-ubyte.gz"), str(shipped / "t10k-labels-idx1-ubyte.gz")
    )
    batch = args.batch // world if args.strong else args.batch
    sampler = distributed.DistributedSampler(dataset, seed=0, drop_last=True)
    loader = data.DataLoader(dataset, batch, sampler=sampler, drop_last=True, device=device)
    np.random.seed(0)
    model = MLPResNet(784, hidden_dim=256, device=device)
    distributed.broadcast_parameters(model)
    timed = TimedAllreduce(model)
    trainer = Trainer(
        model.train(),
        nn.SoftmaxLoss(),
        flatten=True,
        hooks=[timed],
        opt=optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3),
    )

    def batches():
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    stream = batches()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            distributed.barrier()
            started, timed.seconds = time.perf_counter(), 0.0
        trainer.train_step(*next(stream))
    distributed.barrier()
    seconds = time.perf_counter() - started
    reduce_seconds = distributed.all_reduce(timed.seconds, op="max")
    # The same allreduce with the ranks in step: its own cost, without waiting for a slower rank.
    alone = time.perf_counter()
    for _ in range(20):
        distributed.allreduce_gradients(model)
    alone = distributed.all_reduce((time.perf_counter() - alone) / 20, op="max")
    if rank == 0:
        print(
            "RESULT "
            + json.dumps(
                {
                    "ranks": world,
                    "batch_per_rank": batch,
                    "global_batch": batch * world,
                    "threads": ndl.get_num_threads(),
                    "samples_per_s": args.steps * batch * world / seconds,
                    "step_ms": seconds / args.steps * 1e3,
                    "allreduce_ms": reduce_seconds / args.steps * 1e3,
                    "allreduce_alone_ms": alone * 1e3,
                }
            ),
            flush=True,
        )


def launch(ranks: int, threads: int, args, strong: bool) -> dict:
    env = harness.thread_env(threads)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    version = subprocess.run(["mpirun", "--version"], capture_output=True, text=True).stdout
    flags = ["--allow-run-as-root"] if "Open MPI" in version and os.geteuid() == 0 else []
    if "Open MPI" in version and threads > 1:
        flags += ["--bind-to", "none"]  # let one rank's threads use every core
    command = [
        "mpirun",
        *flags,
        "-n",
        str(ranks),
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ] + (["--strong"] if strong else [])
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    for line in result.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batch", type=int, default=128, help="per-rank batch (weak) and global batch (strong)"
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="launches per row; the best")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strong", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if shutil.which("mpirun") is None:
        raise SystemExit(
            "bench_distributed: mpirun not found (Debian: apt-get install "
            "openmpi-bin libopenmpi-dev; then pip install '.[distributed]')"
        )
    version = subprocess.run(
        ["mpirun", "--version"], capture_output=True, text=True
    ).stdout.splitlines()[0]
    print(
        f"{harness.cpu_model()}, {os.cpu_count()} cores; {version}; "
        f"Python {platform.python_version()}; commit {harness.git_commit()}"
    )
    print(f"MLP-ResNet (hidden 256) + Adam on MNIST images, {args.steps} timed steps\n")
    # Last row, for reference: the same cores used by threads in one process instead of ranks.
    configurations = (
        [("weak", r, 1, False) for r in args.ranks]
        + [("strong", r, 1, True) for r in args.ranks if r > 1]
        + [("threads", 1, max(args.ranks), False)] * (max(args.ranks) > 1)
    )
    rows, base = [], None
    for scaling, ranks, threads, strong in configurations:
        row = max(
            (launch(ranks, threads, args, strong) for _ in range(args.repeats)),
            key=lambda run: run["samples_per_s"],
        )
        base = base or row["samples_per_s"]
        rows.append(
            [
                scaling,
                str(ranks),
                str(row["threads"]),
                str(row["batch_per_rank"]),
                f"{row['samples_per_s']:.0f}",
                f"{row['samples_per_s'] / base:.2f}x",
                f"{row['step_ms']:.1f}",
                f"{row['allreduce_ms']:.2f}",
                f"{row['allreduce_alone_ms']:.2f}",
            ]
        )
    print(
        "\n".join(
            harness.markdown_table(
                [
                    "scaling",
                    "ranks",
                    "threads",
                    "batch/rank",
                    "samples/s",
                    "speed-up",
                    "step ms",
                    "allreduce ms",
                    "alone ms",
                ],
                rows,
            )
        )
    )


if __name__ == "__main__":
    main()
