"""DataLoader throughput: an augmented CIFAR-style pipeline with 0, 1 and 2 worker processes.

    python benchmarks/bench_data.py [--workers 0,1,2] [--batch 128]

50,000 random uint8 images of 32x32x3 in memory; each shuffled batch is randomly cropped
(padding 4) and flipped horizontally, normalised to float32 N x C x H x W and wrapped in
Tensors, as a training loop receives it. Two cases: the course's transforms image by image
(Dataset.apply_transforms), and the same transforms through data.transform_batch (the same
draws, so the same images, with the pixel work done once per batch). One call is one batch
(next() on a loader with persistent workers, epoch after epoch); a column is a worker count.
"""

import sys

import numpy as np

import needle as ndl
from needle import data
from needle.apps.bench import harness

IMAGES = 50_000


class AugmentedImages(data.Dataset):
    """uint8 (n, 32, 32, 3) images with labels; a batch is (float32 (B, 3, 32, 32), labels)."""

    def __init__(self, batched: bool):
        super().__init__([data.RandomCrop(4), data.RandomFlipHorizontal()])
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, (IMAGES, 32, 32, 3), dtype=np.uint8)
        self.labels = rng.integers(0, 10, IMAGES).astype(np.uint8)
        self.batched = batched

    def __len__(self):
        return IMAGES

    def __getitem__(self, index):
        return self.get_items(np.atleast_1d(index))

    def get_items(self, indices):
        X = self.images[indices]
        if self.batched:
            X = data.transform_batch(self.transforms, X)
        else:
            X = np.stack([self.apply_transforms(x) for x in X])
        return X.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255), self.labels[
            indices
        ]


def arguments(parser):
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--batch", type=int, default=128, help="images per batch")


def batches(dataset, workers: int, batch: int):
    """A call that returns the next batch of an endless run of epochs."""
    loader = data.DataLoader(
        dataset, batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0, seed=0
    )
    iter(loader)

    def call():
        try:
            return next(loader)
        except StopIteration:
            iter(loader)
            return next(loader)

    return call


def configure(args):
    workers = {f"workers {n}": int(n) for n in args.workers.split(",")}
    cases = [
        harness.Case(
            name,
            lambda backend, batched=batched: batches(
                AugmentedImages(batched), workers[backend.name], args.batch
            ),
            work=args.batch,
        )
        for name, batched in (("per-image transforms", False), ("transform_batch", True))
    ]
    backends = [harness.Backend("needle", "cpu", handle=ndl.cpu(), label=name) for name in workers]
    title = f"Augmented CIFAR-style batches of {args.batch} (crop 4 + flip, float32)"
    return [harness.Workload("data", title, "images/s", "", cases, 5, 3, 0.5)], backends


if __name__ == "__main__":
    sys.exit(
        harness.script_main(
            sys.modules[__name__],
            ratios=lambda args: [
                (f"workers {n}", "workers 0") for n in args.workers.split(",")[1:]
            ],
        )
    )
