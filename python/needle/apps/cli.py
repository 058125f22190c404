"""The `needle` command: `needle train` trains an example model (also `python -m needle train`).

    needle train                              MLP-ResNet on the shipped MNIST split, best device
    needle train --model resnet9 --data-dir ~/data/cifar-10-batches-py
    needle train --model lstm-lm --data-dir ~/data/ptb --epochs 3
    needle train --out runs/mnist --resume    continue from runs/mnist/checkpoint.npz
    mpirun -n 2 needle train --distributed    data-parallel over MPI (README: multi-process)
    needle bench --quick                      needle's devices against PyTorch (needle.apps.bench)
    needle check-backend MODULE_OR_PATH       a backend module against the primitive table

It writes, in --out: checkpoint.npz (model and optimizer state, saved atomically after every
epoch; Ctrl-C saves the state of the last whole epoch), model.safetensors beside it (the same
weights alone, for Module.load_weights, ndl.load and any safetensors reader), metrics.json and
metrics.csv (one row per epoch), curves.png and, with --profile N, profile.txt and profile.json
(ndl.profile's tables and Chrome trace of N steps). User errors and diverged runs: one line, exit
1 (--debug: traceback).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

import needle as ndl
from needle import data, distributed, nn, optim
from needle.apps import bench as benchmark
from needle.apps.arguments import (
    nonnegative_float,
    nonnegative_int,
    positive_int,
    positive_seconds,
)
from needle.apps.models import LanguageModel, MLPResNet, ResNet9
from needle.apps.trainer import (
    CheckpointError,
    EpochResult,
    SequenceBatches,
    Trainer,
    TrainingDiverged,
    read_checkpoint_meta,
    remove_stale_temporaries,
)
from needle.backend_ndarray import ndarray as nd
from needle.backend_ndarray.primitives import UnsupportedDtypeError

MODELS = ("mlp-resnet", "resnet9", "lstm-lm", "transformer-lm")


@dataclass
class Defaults:
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    weight_decay: float


DEFAULTS = {
    "mlp-resnet": Defaults(epochs=10, batch_size=100, lr=1e-3, optimizer="adam", weight_decay=1e-3),
    "resnet9": Defaults(epochs=10, batch_size=128, lr=1e-3, optimizer="adam", weight_decay=1e-3),
    "lstm-lm": Defaults(epochs=5, batch_size=20, lr=20.0, optimizer="sgd", weight_decay=0.0),
    "transformer-lm": Defaults(
        epochs=5, batch_size=20, lr=1e-3, optimizer="adam", weight_decay=0.0
    ),
}


class _Parser(argparse.ArgumentParser):
    """A usage error is one line on stderr and exit status 1, like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(1, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="needle", description="needle command line")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = commands.add_parser(
        "train", help="train an example model", description=__doc__.split("\n\n")[0]
    )
    train.add_argument("--model", choices=MODELS, default="mlp-resnet")
    train.add_argument(
        "--device",
        choices=("auto", *nd.devices_by_name()),
        default="auto",
        help="auto: the best available (cuda, then cpu, then cpu_numpy); metal and mps: "
        'Apple GPUs, no float64 or bfloat16 (pip install "needle[metal]"); webgpu: wgpu on '
        'Metal, Vulkan or D3D12 (pip install "needle[webgpu]"); cuda_emulated and '
        "metal_emulated: the GPU kernels on the CPU with the system C++ compiler, slow, to "
        "check kernels (docs/emulated_devices.md)",
    )
    train.add_argument(
        "--data-dir",
        default=None,
        help="MNIST .gz files, CIFAR-10 python batches or PTB text files that "
        "you downloaded; without it mlp-resnet uses the shipped MNIST split",
    )
    train.add_argument("--epochs", type=positive_int, default=None)
    train.add_argument("--batch-size", type=positive_int, default=None)
    train.add_argument("--lr", type=nonnegative_float, default=None)
    train.add_argument("--optimizer", choices=("adam", "sgd"), default=None)
    train.add_argument("--weight-decay", type=nonnegative_float, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", default=None, help="output folder (default runs/MODEL)")
    train.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint in --out"
    )
    train.add_argument(
        "--max-batches",
        type=positive_int,
        default=None,
        help="stop each epoch after this many batches (quick trials)",
    )
    train.add_argument(
        "--accumulate",
        type=positive_int,
        default=None,
        metavar="N",
        help="gradient accumulation: one optimizer step per N batches (their gradients "
        "summed, each loss scaled by 1/N), as a batch N times larger without its memory",
    )
    train.add_argument(
        "--compile",
        action="store_true",
        help="record each update once and replay it (ndl.compile): same results, less Python",
    )
    train.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="bf16/fp16: forward under ndl.autocast (matmuls and convs in the 16-bit type, "
        "float32 master weights); fp16 adds loss scaling, logging skipped steps",
    )
    train.add_argument(
        "--compare-devices",
        default=None,
        metavar="A,B",
        help="instead of training: run the first training step (--max-batches steps) on each "
        "device from the same seed and data, and name the first op whose output or gradient "
        "differs (ndl.debug.compare); exit 1 when one does",
    )
    train.add_argument(
        "--profile",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"profile N training steps after {ProfileSteps.WARMUP} warm-up steps (ndl.profile): "
        "print the tables of ops and primitives and write them to profile.txt in --out, with a "
        "Chrome trace (Perfetto, chrome://tracing) in profile.json",
    )
    train.add_argument(
        "--workers",
        type=nonnegative_int,
        default=0,
        metavar="N",
        help="build image batches in N worker processes, ahead of the training step (the "
        "log's data_wait: the share of the time spent waiting for them; data_blocked: for "
        "batches not yet built)",
    )
    train.add_argument(
        "--augment",
        action="store_true",
        help="resnet9: random crops (padding 4) and horizontal flips of the training images",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--debug", action="store_true", help="tracebacks for errors")
    train.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel over MPI, launched as `mpirun -n N needle train "
        "--distributed`; --batch-size is per rank",
    )
    train.add_argument(
        "--collective-timeout",
        type=positive_seconds,
        default=None,
        metavar="S",
        help="with --distributed: a collective that waits more than S seconds (a rank froze "
        "or died) ends the job with a message instead of hanging (default: no limit)",
    )
    bench = commands.add_parser(
        "bench",
        help="benchmark needle's devices against PyTorch",
        description=benchmark.__doc__.split("\n\n")[0],
    )
    benchmark.add_arguments(bench)
    bench.add_argument("--debug", action="store_true", help="tracebacks for errors")
    # Listed for --help; main() hands its arguments to needle.conformance.check (exit 2 for
    # usage errors there: 1 means a backend failed).
    commands.add_parser("check-backend", help="test a backend module against the primitive table")
    return parser


def resolve_device(name: str):
    if name == "auto":
        for device in (ndl.cuda(), ndl.cpu()):
            if device.enabled():
                return device
        return ndl.cpu_numpy()
    device = getattr(ndl, name)()
    if not device.enabled():
        reason = " ".join(str(device.reason).split())  # one line, whatever the backend wrote
        raise SystemExit(
            f"needle train: device {name} is not available: {reason} (available: "
            f"{', '.join(d.name for d in ndl.all_devices() if d.enabled())})"
        )
    return device


@dataclass
class Task:
    """A model and its training and validation data, as a Trainer takes them."""

    model: nn.Module
    train_data: Any
    val_data: Any
    source: str  # where the data came from, for the log
    metric: str = "accuracy"  # or "perplexity"
    flatten: bool = False
    clip: float | None = None
    sampler: Any = None  # the training data's DistributedSampler under --distributed


def classification_loaders(
    train_set, val_set, batch_size: int, device, seed: int, data_parallel: bool, workers: int = 0
):
    """(train loader, validation loader, sampler): shuffled by NumPy's global generator, or
    under --distributed each rank's shard of a DistributedSampler (batch_size per rank). With
    workers, batches are built ahead in worker processes that last the whole run (their
    augmentation seeds drawn from np.random, which EpochSeed seeds: runs stay reproducible)."""
    options = dict(device=device, num_workers=workers, persistent_workers=workers > 0)
    if not data_parallel:
        return (
            data.DataLoader(train_set, batch_size, shuffle=True, **options),
            data.DataLoader(val_set, batch_size, **options),
            None,
        )
    # drop_last: the same number of batches on every rank, as each training step is a
    # collective. Validation has no collectives inside the loop, so it sees every sample.
    sampler = distributed.DistributedSampler(train_set, seed=seed, drop_last=True)
    return (
        data.DataLoader(train_set, batch_size, sampler=sampler, **options),
        data.DataLoader(
            val_set,
            batch_size,
            sampler=distributed.DistributedSampler(val_set, shuffle=False),
            **options,
        ),
        sampler,
    )


def language_model_batches(
    ids, batch_size: int, seq_len: int, device, rank: int = 0, world: int = 1
) -> SequenceBatches:
    """Rank r takes streams [r*B, (r+1)*B) of the corpus cut into world*B streams: together
    the ranks take the steps of one process with batch world*B (one process: all of them)."""
    streams = slice(rank * batch_size, (rank + 1) * batch_size)
    batches = np.ascontiguousarray(data.batchify(ids, batch_size * world)[:, streams])
    return SequenceBatches(batches, seq_len, device)


def _mnist_sets(data_dir: str | None, seed: int):
    if data_dir is None:
        shipped = data.shipped_data_dir()
        full = data.MNISTDataset(
            str(shipped / "t10k-images-idx3-ubyte.gz"), str(shipped / "t10k-labels-idx1-ubyte.gz")
        )
        train_set, val_set = data.random_split(full, [8000, 2000], generator=seed)
        return train_set, val_set, "shipped MNIST test split (8,000 train / 2,000 validation)"
    train_set = data.MNISTDataset(
        os.path.join(data_dir, "train-images-idx3-ubyte.gz"),
        os.path.join(data_dir, "train-labels-idx1-ubyte.gz"),
    )
    val_set = data.MNISTDataset(
        os.path.join(data_dir, "t10k-images-idx3-ubyte.gz"),
        os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz"),
    )
    return train_set, val_set, f"MNIST from {data_dir}"


def _require_data_dir(args, what: str, where: str) -> str:
    if args.data_dir is None:
        raise SystemExit(
            f"needle train: --model {args.model} needs {what}, which needle does not "
            f"ship; download it ({where}) and pass --data-dir DIR"
        )
    if not os.path.isdir(args.data_dir):
        raise SystemExit(f"needle train: --data-dir {args.data_dir} is not a directory")
    return args.data_dir


def build_task(args, device, batch_size: int, rank: int = 0, world: int = 1) -> Task:
    if args.model in ("mlp-resnet", "resnet9"):
        if args.model == "mlp-resnet":
            if args.data_dir is not None and not os.path.isdir(args.data_dir):
                raise SystemExit(f"needle train: --data-dir {args.data_dir} is not a directory")
            train_set, val_set, source = _mnist_sets(args.data_dir, args.seed)
            model = MLPResNet(784, hidden_dim=256, device=device)
        else:
            folder = _require_data_dir(
                args,
                "CIFAR-10 (the python pickle batches)",
                "https://www.cs.toronto.edu/~kriz/cifar.html",
            )
            augment = [data.RandomCrop(4), data.RandomFlipHorizontal()] if args.augment else None
            train_set = data.CIFAR10Dataset(folder, train=True, transforms=augment)
            val_set = data.CIFAR10Dataset(folder, train=False)
            model, source = ResNet9(device=device), f"CIFAR-10 from {folder}"
        train_loader, val_loader, sampler = classification_loaders(
            train_set, val_set, batch_size, device, args.seed, args.distributed, args.workers
        )
        return Task(
            model,
            train_loader,
            val_loader,
            source,
            flatten=args.model == "mlp-resnet",
            sampler=sampler,
        )
    folder = _require_data_dir(
        args,
        "Penn Treebank text (train/valid/test .txt)",
        "e.g. the ptb.*.txt files of the Mikolov PTB distribution",
    )
    corpus = data.Corpus(folder)
    val_ids = corpus.valid if getattr(corpus, "valid", None) is not None else corpus.test
    seq_model = "lstm" if args.model == "lstm-lm" else "transformer"
    seq_len = 20 if seq_model == "lstm" else 40
    model = LanguageModel(
        100 if seq_model == "lstm" else 64,
        len(corpus.dictionary),
        hidden_size=100 if seq_model == "lstm" else 128,
        num_layers=2,
        seq_model=seq_model,
        seq_len=seq_len,
        device=device,
    )
    train_data, val_data = (
        language_model_batches(ids, batch_size, seq_len, device, rank, world)
        for ids in (corpus.train, val_ids)
    )
    return Task(
        model,
        train_data,
        val_data,
        f"Penn Treebank from {folder} ({len(corpus.dictionary)} words)",
        metric="perplexity",
        clip=0.25 if seq_model == "lstm" else None,
    )


def make_optimizer(name: str, params, lr: float, weight_decay: float):
    if name == "adam":
        return optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return optim.SGD(params, lr=lr, weight_decay=weight_decay)


def _finite_or_none(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_metrics(out: str, history: list[dict]) -> None:
    """metrics.json (strict JSON: a non-finite number is written as null) and metrics.csv."""
    history = [{k: _finite_or_none(v) for k, v in row.items()} for row in history]
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(history, f, indent=2, allow_nan=False)
    if history:
        with open(os.path.join(out, "metrics.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)


def plot_curves(out: str, history: list[dict], metric: str, title: str) -> str | None:
    """curves.png: loss and accuracy (or perplexity) per epoch, train and validation."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        left.plot(epochs, [row[f"{split}_loss"] for row in history], marker="o", label=split)
        right.plot(epochs, [row[f"{split}_{metric}"] for row in history], marker="o", label=split)
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    right.set(xlabel="epoch", ylabel=metric, title=metric)
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path = os.path.join(out, "curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _epoch_row(result: EpochResult, lr: float, metric: str) -> dict:
    train, val = result.train, result.val
    row = {"epoch": result.epoch, "lr": lr, "train_loss": train[1], "val_loss": val[1]}
    if metric == "perplexity":
        row.update(
            train_perplexity=math.exp(min(train[1], 50)), val_perplexity=math.exp(min(val[1], 50))
        )
    else:
        row.update(train_accuracy=train[0], val_accuracy=val[0])
    row["seconds"] = round(result.seconds, 2)
    # Waiting for batches: the share of the training pass, and of its slowest step; blocked:
    # the part of that wait when a batch was not ready (not yet built by its worker).
    row["data_wait"], row["data_wait_max"] = (round(w, 4) for w in result.data_wait)
    row["data_blocked"], row["data_blocked_max"] = (round(w, 4) for w in result.data_blocked)
    return row


class EpochSeed:
    """Trainer hook: one seed per epoch drives shuffling and dropout, so a resumed run repeats
    exactly what an uninterrupted one would have done. Under --distributed each rank draws its
    own dropout masks, and the shuffle comes from the DistributedSampler's epoch."""

    def __init__(self, seed: int, rank: int = 0):
        self.seed, self.rank = seed, rank

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        np.random.seed(self.seed * 100003 + epoch + 7919 * self.rank)


WEIGHTS = "model.safetensors"  # what needle train writes beside checkpoint.npz


class RunLog:
    """Trainer hook of `needle train`: after every epoch a metrics row and a step of the
    learning-rate schedule, then, on rank 0 only, the checkpoint, metrics.json and metrics.csv
    and the printed row."""

    def __init__(self, out: str, config: dict, schedule, metric: str, primary: bool):
        self.out, self.config, self.schedule = out, config, schedule
        self.metric, self.primary = metric, primary
        self.checkpoint = os.path.join(out, "checkpoint.npz")
        self.history: list[dict] = []
        self.snapshot: tuple[dict, dict] | None = None

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        # The state at the epoch boundary, which an interrupted epoch's checkpoint holds.
        if self.primary:
            self.snapshot = (trainer.model.state_dict(), trainer.opt.state_dict())

    def rewind(self, trainer: Trainer) -> None:
        """Back to the start of the unfinished epoch, so --resume repeats none of it."""
        if self.snapshot is not None:
            trainer.model.load_state_dict(self.snapshot[0])
            trainer.opt.load_state_dict(self.snapshot[1])

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> None:
        self.snapshot = None  # the epoch is whole: an interrupt from here on saves it
        row = _epoch_row(result, trainer.opt.lr, self.metric)
        if trainer.scaler is not None:  # fp16: steps skipped for inf/NaN gradients so far
            row.update(skipped_steps=trainer.scaler.skipped, loss_scale=trainer.scaler.get_scale())
        self.history.append(row)
        self.schedule.step()
        if self.primary:
            self.save(trainer)
            write_metrics(self.out, self.history)
            print(
                "  ".join(
                    f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                ),
                flush=True,
            )

    def save(self, trainer: Trainer, **extra) -> None:
        """The checkpoint, marked with the last whole epoch, and its weights alone."""
        trainer.save(
            self.checkpoint,
            {
                "epoch": trainer.epoch,
                "history": self.history,
                "config": self.config,
                "schedule": self.schedule.state_dict(),
                **extra,
            },
        )
        trainer.model.save_weights(os.path.join(self.out, WEIGHTS))

    def resume(self, trainer: Trainer, model_name: str, epochs: int) -> int:
        """Load the checkpoint into the trainer and the schedule; returns its epoch."""
        meta = trainer.load(self.checkpoint)
        self.history = meta["history"]
        self.schedule.load_state_dict(meta["schedule"])
        # The cosine runs over this invocation's --epochs, which may differ from the first run's.
        self.schedule.T_max = max(epochs, 1)
        trainer.opt.lr = self.schedule.get_lr()
        return meta["epoch"]


class ProfileSteps:
    """Trainer hook of `needle train --profile N`: ndl.profile over training steps WARMUP + 1
    to WARMUP + N (the first steps pay one-time costs: buffer caches, thread pools), then the
    tables printed and written to profile.txt, the Chrome trace to profile.json."""

    WARMUP = 2

    def __init__(self, steps: int, out: str):
        self.steps, self.out = steps, out
        self.prof: ndl.profile | None = None

    def check(self, steps_per_epoch: int) -> None:
        """One line and exit 1 for an epoch too short to profile as asked."""
        if steps_per_epoch < self.WARMUP + self.steps:
            raise SystemExit(
                f"needle train: --profile {self.steps} needs {self.WARMUP} warm-up steps and "
                f"{self.steps} more in an epoch, which has {steps_per_epoch}"
            )

    def after_step(self, trainer: Trainer) -> None:
        if trainer.steps == self.WARMUP:
            self.prof = ndl.profile().start()
        elif self.prof is not None and trainer.steps == self.WARMUP + self.steps:
            self.prof.stop()
            tables = "\n\n".join(
                self.prof.table(sort_by="time", group_by=group) for group in ("op", "primitive")
            )
            first = self.WARMUP + 1
            text = f"profile of training steps {first}-{first + self.steps - 1}:\n{tables}\n"
            with open(os.path.join(self.out, "profile.txt"), "w") as f:
                f.write(text)
            self.prof.export_chrome_trace(os.path.join(self.out, "profile.json"))
            self.prof = None
            print(text + f"wrote {self.out}/profile.txt and profile.json (a Chrome trace)")

    def close(self) -> None:
        """Stops a profile that a failed or interrupted run left recording."""
        if self.prof is not None:
            self.prof.stop()
            self.prof = None


# What a checkpoint whose config lacks a key (one written before the flag existed) ran with.
RESUME_DEFAULTS = {"accumulate": 1}


def _resumed_config(args, checkpoint: str) -> dict:
    """The checkpoint's config, checked against this invocation's flags: the model must be
    the same, and --lr, --weight-decay and --optimizer, which the checkpoint's optimizer state
    fixes, and --accumulate, which fixes what an update is, may only repeat what it holds."""
    if not os.path.exists(checkpoint):
        raise SystemExit(f"needle train: --resume, but there is no checkpoint at {checkpoint}")
    config = read_checkpoint_meta(checkpoint).get("config")
    if not isinstance(config, dict):
        raise SystemExit(
            f"needle train: {checkpoint} has no run config; it is not from needle train"
        )
    if config.get("model") != args.model:
        raise SystemExit(
            f"needle train: {checkpoint} holds a {config.get('model')} model, not {args.model}"
        )
    for flag, key in (
        ("--lr", "lr"),
        ("--weight-decay", "weight_decay"),
        ("--optimizer", "optimizer"),
        ("--accumulate", "accumulate"),
    ):
        given = getattr(args, key)
        saved = config.get(key, RESUME_DEFAULTS.get(key))
        if given is not None and given != saved:
            raise SystemExit(
                f"needle train: --resume continues with the checkpoint's {flag} "
                f"{saved}; drop {flag} {given}, or train afresh in another --out"
            )
    return config


def _prepare_out(out: str) -> None:
    """Create --out, or stop with one line if it cannot be written."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        raise SystemExit(f"needle train: cannot create --out {out}: {error.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise SystemExit(f"needle train: --out {out} is not writable")


INTERRUPT_GRACE_S = 2.0  # how long an interrupted rank other than 0 lets rank 0 save


def compare_devices(args) -> int:
    """needle train --compare-devices A,B: the first --max-batches (default 1) training steps
    of the configured job on each device, from the same seed and data, compared op by op."""
    from needle import debug

    defaults = DEFAULTS[args.model]
    batch_size = args.batch_size or defaults.batch_size
    devices = [resolve_device(name.strip()) for name in args.compare_devices.split(",")]
    if len(devices) < 2:
        raise SystemExit("needle train: --compare-devices needs two devices, e.g. cpu_numpy,cpu")

    def steps(device):
        np.random.seed(args.seed)
        task = build_task(args, device, batch_size)
        opt = make_optimizer(
            args.optimizer or defaults.optimizer,
            task.model.parameters(),
            defaults.lr if args.lr is None else args.lr,
            defaults.weight_decay if args.weight_decay is None else args.weight_decay,
        )
        trainer = Trainer(
            task.model, nn.SoftmaxLoss(), opt, clip=task.clip, flatten=task.flatten,
            precision=args.precision,
        )  # fmt: skip
        state = None
        for x, y in itertools.islice(task.train_data, args.max_batches or 1):
            _, _, state = trainer.train_step(x, y, state)

    return 1 if debug.compare_runs(steps, devices) else 0


def train(args) -> int:
    if args.compare_devices:
        return compare_devices(args)
    defaults = DEFAULTS[args.model]
    out = args.out or os.path.join("runs", args.model)
    checkpoint = os.path.join(out, "checkpoint.npz")
    resumed = _resumed_config(args, checkpoint) if args.resume else {}
    epochs = args.epochs if args.epochs is not None else defaults.epochs
    batch_size = args.batch_size or defaults.batch_size
    lr = args.lr if args.lr is not None else resumed.get("lr", defaults.lr)
    optimizer_name = args.optimizer or resumed.get("optimizer", defaults.optimizer)
    weight_decay = (
        args.weight_decay
        if args.weight_decay is not None
        else resumed.get("weight_decay", defaults.weight_decay)
    )
    accumulate = args.accumulate or resumed.get("accumulate", RESUME_DEFAULTS["accumulate"])
    if args.profile and args.compile:
        raise SystemExit(
            "needle train: --profile cannot see --compile's replayed steps (they call the "
            "kernels directly); profile without --compile"
        )
    if args.augment and args.model != "resnet9":
        raise SystemExit("needle train: --augment applies only to --model resnet9")
    if args.collective_timeout is not None and not args.distributed:
        raise SystemExit("needle train: --collective-timeout applies only with --distributed")
    device = resolve_device(args.device)
    rank, world = 0, 1
    if args.distributed:
        try:
            distributed.init(required=True)
        except RuntimeError as error:
            raise SystemExit(f"needle train --distributed: {error}") from None
        rank, world = distributed.rank(), distributed.world_size()
        distributed.set_collective_timeout(args.collective_timeout, prefix="needle train")
    primary = rank == 0  # only rank 0 prints and writes files
    say = print if primary else (lambda *args, **kwargs: None)
    if primary:
        _prepare_out(out)
        for path in (checkpoint, os.path.join(out, WEIGHTS)):
            remove_stale_temporaries(path)  # left by a run killed while saving

    np.random.seed(args.seed)  # model initialisation
    task = build_task(args, device, batch_size, rank, world)
    opt = make_optimizer(optimizer_name, task.model.parameters(), lr, weight_decay)
    # Cosine decay to zero over the run: the last epochs settle instead of bouncing around.
    schedule = optim.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    config = {
        "model": args.model,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer_name,
        "weight_decay": weight_decay,
        "accumulate": accumulate,
        "precision": args.precision,
        "seed": args.seed,
        # (with workers, each epoch draws one more number from np.random: a run differs from
        # one without them, and its resumption must keep them)
        "augment": args.augment,
        "workers": args.workers,
    }
    log = RunLog(out, config, schedule, task.metric, primary)
    hooks = [EpochSeed(args.seed, rank)]
    if args.distributed:  # gradients averaged, metrics summed, one BatchNorm average
        hooks.append(distributed.epoch_hooks(task.model, task.sampler))
    profiler = ProfileSteps(args.profile, out) if args.profile and primary else None
    if profiler is not None:
        batches = min(len(task.train_data), args.max_batches or len(task.train_data))
        profiler.check(math.ceil(batches / accumulate))
        hooks.append(profiler)
    trainer = Trainer(
        task.model,
        nn.SoftmaxLoss(),
        opt,
        train_data=task.train_data,
        val_data=task.val_data,
        clip=task.clip,
        flatten=task.flatten,
        hooks=hooks + [log],
        max_batches=args.max_batches,
        accumulate=accumulate,
        progress=not args.no_progress and sys.stderr.isatty() and primary,
        compile=args.compile,
        precision=args.precision,
    )
    start_epoch = 0
    source = task.source
    if args.resume:
        start_epoch = log.resume(trainer, args.model, epochs)
        say(f"resuming from {checkpoint} after epoch {start_epoch}")
    if args.distributed:
        distributed.broadcast_parameters(task.model)  # every rank starts from rank 0's model
        source += f", {world} ranks x batch {batch_size}"

    n_params = sum(int(np.prod(p.shape)) for p in task.model.parameters())
    say(
        f"needle {ndl.__version__}: {args.model} ({n_params:,} parameters) on {source}, "
        f"device {device}, {epochs} epochs, {optimizer_name} lr {lr}"
        + (f", {accumulate} batches per step" if accumulate > 1 else "")
    )
    try:
        trainer.fit(epochs, start_epoch)
    except KeyboardInterrupt:
        # The model may be part-way through an epoch: save it, marked with the last whole epoch,
        # so --resume continues from a usable state.
        if primary:
            log.rewind(trainer)
            log.save(trainer, interrupted=True)
            print(
                f"\ninterrupted: checkpoint saved to {checkpoint} (the state after epoch "
                f"{trainer.epoch}; the unfinished epoch is redone); continue with --resume",
                file=sys.stderr,
            )
        if world > 1:
            # The other ranks wait in a collective this rank will never join (or, if the signal
            # reached them too, stop here as well): end the job. Another rank gives rank 0, if
            # it was interrupted too, a moment to finish saving; rank 0's checkpoint of the last
            # whole epoch is on disk either way.
            if not primary:
                time.sleep(INTERRUPT_GRACE_S)
            distributed.abort(130, f"rank {rank} interrupted")
        return 130
    except TrainingDiverged as error:
        where = (
            f"{checkpoint} still holds epoch {trainer.epoch}"
            if trainer.epoch > start_epoch or args.resume
            else "this run saved no checkpoint"
        )
        raise SystemExit(
            f"needle train: training diverged in epoch {trainer.epoch + 1}: {error}; stopped "
            f"({where}); try a lower --lr"
        ) from None
    finally:
        if profiler is not None:
            profiler.close()
    if args.distributed:  # equal on every rank: the ranks trained one model
        print(f"parameter checksum: {distributed.parameter_checksum(task.model)}", flush=True)
    if not primary:
        return 0
    history = log.history
    plot = plot_curves(out, history, task.metric, f"needle: {args.model} on {source}")
    final = history[-1] if history else {}
    summary = (
        "nothing to do"
        if not final
        else f"validation accuracy {final['val_accuracy']:.4f}"
        if task.metric == "accuracy"
        else f"validation perplexity {final['val_perplexity']:.2f}"
    )
    print(
        f"done: {summary}; wrote {checkpoint}, metrics.json, metrics.csv"
        + (f", {os.path.basename(plot)}" if plot else " (install matplotlib for curves.png)")
    )
    return 0


# What a user's data, checkpoint or files can raise; without --debug, one line and exit 1.
# UnsupportedDtypeError: a device that cannot hold a dtype the job needs (float64 on metal or
# webgpu).
USER_ERRORS = (
    CheckpointError,
    OSError,
    ValueError,
    EOFError,
    KeyError,
    IndexError,
    UnsupportedDtypeError,
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check-backend"]:
        from needle.conformance import check

        return check.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return train_distributed(args) if args.distributed else train(args)
        return benchmark.run(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"needle {args.command}: {type(error).__name__}: {message}", file=sys.stderr)
        return 1


def train_distributed(args) -> int:
    """train() on this rank. A rank that stops with an error (a SystemExit; other exceptions go
    through needle.distributed's excepthook) ends the whole job, so no rank waits forever."""
    try:
        return train(args)
    except SystemExit as stop:
        if stop.code not in (None, 0) and distributed.available() and distributed.world_size() > 1:
            distributed.abort(1, f"rank {distributed.rank()} stopped: {stop.code}")
        raise
    except USER_ERRORS as error:  # main() would print it and return: stop the other ranks too
        if distributed.available() and distributed.world_size() > 1:
            distributed.abort(1, f"rank {distributed.rank()} stopped: {error}")
        raise


if __name__ == "__main__":
    sys.exit(main())
