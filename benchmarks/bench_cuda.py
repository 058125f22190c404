"""needle's CUDA backend against PyTorch on the same GPU, in the same run.

    python benchmarks/bench_cuda.py [--sizes 512,1024,2048,4096,8192] [--batches 128,1024]
                                    [--write benchmarks/RESULTS.md] [--json-out cuda.json]

1. float32 matmul sweep, n x n @ n x n: needle (NDArray @ on ndl.cuda(): the hand-written
   SGEMM, output allocated per call) against torch.matmul with TF32 off (cuBLAS's FP32 path).
2. One training step of the MLP 784-512-512-10 (ReLU, softmax cross-entropy, SGD lr 0.01) at
   batch 128 and 1024: needle on ndl.cuda() against PyTorch on CUDA.
Targets (issue 5): SGEMM at 4096 at least 70% of cuBLAS's speed; the MLP step at least 50%
of PyTorch's (at most 2x its time).

The workloads are `needle bench`'s; timing (the device synchronised before the clock stops),
the machine description and the tables come from needle.apps.bench.harness. Without a GPU (or
without the CUDA backend) the script says so and exits 0; without a CUDA build of PyTorch its
column says why. `--device cpu` runs the same measurements on needle's and PyTorch's CPU
backends: a rehearsal without a GPU (benchmarks/gpu_check.sh --dry-run), not a CUDA result.
"""

import sys

import needle as ndl
from needle.apps.bench import harness
from needle.apps.bench.workloads import TrainSpec, matmul_workload, train_workload


def arguments(parser):
    parser.add_argument("--sizes", default="512,1024,2048,4096,8192")
    parser.add_argument("--batches", default="128,1024")
    parser.add_argument(
        "--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a rehearsal (default cuda)"
    )


def ratios(args):
    return [(f"needle {args.device}", f"torch {args.device}")]


def skip(args):
    """Why there is nothing to measure here: no GPU, or no CUDA backend (None if there is)."""
    if args.device != "cuda" or ndl.cuda().enabled():
        return None
    from needle.backend_ndarray import ndarray

    why = (
        "the CUDA backend is not built"
        if ndarray.ndarray_backend_cuda is None
        else "no NVIDIA GPU is visible (the CUDA backend is built)"
    )
    return f"bench_cuda: needs an NVIDIA GPU: {why}; nothing to measure here."


def configure(args):
    torch = harness.import_torch()
    if torch is not None:  # FP32 cuBLAS, as needle computes
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    sizes = [int(s) for s in args.sizes.split(",") if s]
    mlps = [
        TrainSpec("mlp", (("sizes", (784, 512, 512, 10)), ("batch", int(b))))
        for b in args.batches.split(",")
        if b
    ]
    return [
        matmul_workload(sizes, [], repeats=10, warmup=2, min_time=0.1),
        train_workload(mlps, repeats=10, warmup=5, min_time=0.1),
    ], [harness.needle_backend(args.device), harness.torch_backend(args.device)]


def after(args, results):
    """Describes the GPU measured, below the tables."""
    if args.device != "cuda":
        return
    info = ndl.cuda().mod.device_info()
    version = lambda v: f"{v // 1000}.{v % 1000 // 10}"  # noqa: E731
    print(
        f"GPU: {info['name']} ({info['sm_count']} SMs, compute capability "
        f"{info['compute_capability'][0]}.{info['compute_capability'][1]}); driver CUDA "
        f"{version(info['driver_version'])}, needle built with CUDA runtime "
        f"{version(info['runtime_version'])}"
    )


if __name__ == "__main__":
    sys.exit(harness.script_main(sys.modules[__name__], ratios=ratios))
