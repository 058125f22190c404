"""Training-step time: needle's C++ CPU backend against PyTorch on the CPU, same threads.

    python benchmarks/bench_train.py                   1 and 2 threads, all three models
    python benchmarks/bench_train.py --threads 1 --models mlp --profile
    python benchmarks/bench_train.py --models resnet9 --resnet-batches 16,32,64,128
    python benchmarks/bench_train.py --models mlp,resnet9 --precision fp32,bf16
    python benchmarks/bench_train.py --models mlp,resnet9 --precision bf16

One step is zero_grad, forward, softmax cross-entropy, backward and an SGD update, on fixed
random data: an MLP 784-512-512-10 (batch 128), ResNet-9 on 3x32x32 (batch 128) and a 2-layer
LSTM language model (seq 20 x batch 20, hidden and embedding 100, vocabulary 10,000), the
steps of `needle bench`'s train workload. Each thread count runs in its own process whose
environment pins every library to it (needle.apps.bench.harness). "needle cpu compiled" runs
the same step through ndl.compile (recorded before timing starts, then replayed). With a
16-bit --precision, "needle cpu fp32" runs each row's step in float32, in the same rounds: its
ratio to "needle cpu" is the gain of autocast (the rows' own float32 steps, under --precision
fp32, are timed in other rounds).

--profile then breaks each needle step down (needle.apps.bench.step_profile): time inside each
kind of backend kernel and, by difference, outside them (Python and NumPy), then cProfile's
top functions.
"""

import sys

from needle.apps.bench import harness
from needle.apps.bench.step_profile import profile_step
from needle.apps.bench.workloads import COMPILED, FLOAT32, TrainSpec, train_specs, train_workload

PROFILE_STEPS = {"mlp": 100, "resnet9": 3, "lstm-lm": 5}


def arguments(parser):
    parser.add_argument(
        "--models",
        default="mlp,resnet9,lstm-lm",
        help="comma-separated subset of mlp, resnet9, lstm-lm",
    )
    parser.add_argument(
        "--resnet-batches",
        default="128",
        help="comma-separated ResNet-9 batch sizes (the course's seeds use 16, 32 and 64)",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        help="comma-separated fp32, bf16, fp16: each model's step also under autocast "
        "(needle's and torch's) in that 16-bit type",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also break each needle step down (at each thread count)",
    )


def selected_specs(args) -> list[TrainSpec]:
    """The models, ResNet-9 batch sizes and precisions the command line asks for."""
    specs = []
    for spec in train_specs():
        if spec.model not in args.models.split(","):
            continue
        if spec.model != "resnet9":
            specs.append(spec)
            continue
        for batch in map(int, args.resnet_batches.split(",")):
            params = dict(spec.params, batch=batch)
            specs.append(TrainSpec(spec.model, tuple(params.items())))
    specs = [
        TrainSpec(s.model, s.params + ((("precision", p),) if p != "fp32" else ()))
        for s in specs
        for p in args.precision.split(",")
    ]
    return specs


def low_precision(args) -> bool:
    return any(p != "fp32" for p in args.precision.split(","))


def configure(args):
    backends = [
        harness.needle_backend("cpu"),
        harness.needle_backend("cpu", label=f"needle cpu {COMPILED}"),
        harness.torch_backend("cpu"),
    ]
    if low_precision(args):
        backends.append(harness.needle_backend("cpu", label=f"needle cpu {FLOAT32}"))
    return [train_workload(selected_specs(args), repeats=7, warmup=2, min_time=0.2)], backends


def ratios(args) -> list[tuple[str, str]]:
    pairs = [
        ("needle cpu", "torch cpu"),
        (f"needle cpu {COMPILED}", "torch cpu"),
        (f"needle cpu {COMPILED}", "needle cpu"),
    ]
    return pairs + ([("needle cpu", f"needle cpu {FLOAT32}")] if low_precision(args) else [])


def after(args, results):
    """With --profile, breaks each needle step down, below the tables."""
    if args.profile:
        for spec in selected_specs(args):
            for result in results:
                threads = result["machine"]["threads"]["requested"]
                profile_step(spec, threads, PROFILE_STEPS[spec.model])


if __name__ == "__main__":
    sys.exit(
        harness.script_main(
            sys.modules[__name__],
            ratios=ratios,
            threads="1,2",
        )
    )
