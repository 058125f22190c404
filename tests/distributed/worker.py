"""One scenario of tests/test_distributed.py, run on every rank under mpirun (or alone):

    python worker.py SCENARIO OUT_DIR [options]

Each rank writes what it saw to OUT_DIR/rank<r>.json (and .npz), and the test compares them.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

import needle as ndl
from needle import distributed as dist, nn
from needle.apps.trainer import Trainer


def device():
    return ndl.cpu() if ndl.cpu().enabled() else ndl.cpu_numpy()


def write(out, payload, arrays=None):
    rank = dist.rank()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(payload, f)
    if arrays is not None:
        np.savez(os.path.join(out, f"rank{rank}.npz"), **arrays)


def small_model(seed):
    np.random.seed(seed)
    return nn.Sequential(
        nn.Linear(10, 16, device=device()), nn.ReLU(), nn.Linear(16, 3, device=device())
    )


def collectives(args):
    r, w = dist.rank(), dist.world_size()
    t = ndl.Tensor(np.full((2, 3), r + 1.0), device=device())
    nd = ndl.backend_ndarray.array(np.arange(4.0) * (r + 1), device=device())
    model = nn.Sequential(small_model(seed=100 + r), nn.BatchNorm1d(3, device=device()))
    # Rank-specific buffers, to be averaged by allreduce_buffers.
    model.modules[1].running_mean.data = ndl.Tensor(np.full(3, float(r)), device=device())
    before = dist.parameter_checksum(model)
    dist.broadcast_parameters(model)
    after_broadcast = dist.parameter_checksum(model)
    model.modules[1].running_mean.data = ndl.Tensor(np.full(3, float(r)), device=device())
    dist.allreduce_buffers(model)
    dist.barrier()
    sampler = dist.DistributedSampler(list(range(11)), seed=5)
    sampler.set_epoch(2)
    mean_t = dist.all_reduce(t)
    write(
        args.out,
        {
            "rank": r,
            "world": w,
            "primary": dist.is_primary(),
            "tensor_mean": mean_t.numpy().tolist(),
            "tensor_type": type(mean_t).__name__,
            "tensor_device": str(mean_t.device),
            "tensor_dtype": mean_t.dtype,
            "tensor_sum": dist.all_reduce(t, op="sum").numpy().tolist(),
            "ndarray_max": dist.all_reduce(nd, op="max").numpy().tolist(),
            "ndarray_type": type(dist.all_reduce(nd, op="max")).__name__,
            "numpy_min": dist.all_reduce(np.array([r, -r]), op="min").tolist(),
            "int_sum": dist.all_reduce(r + 1, op="sum"),
            "float_mean": dist.all_reduce(float(r), op="mean"),
            "input_unchanged": t.numpy().tolist(),
            "checksum_before": before,
            "checksum_after_broadcast": after_broadcast,
            "running_mean": model.modules[1].running_mean.numpy().tolist(),
            "sampler": list(sampler),
            "sampler_len": len(sampler),
        },
    )


def train(args):
    """SGD with momentum on a fixed problem; each rank starts from different weights, so the
    equality at the end also shows that broadcast_parameters ran."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.samples, 10)).astype(np.float32)
    y = rng.integers(0, 3, args.samples)
    dataset = ndl.data.NDArrayDataset(x, y)
    model = dist.DistributedDataParallel(small_model(seed=dist.rank()))
    sampler = dist.DistributedSampler(dataset, seed=3, drop_last=True)
    loader = ndl.data.DataLoader(dataset, args.batch, sampler=sampler, device=device())
    opt = ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = Trainer(
        model, nn.SoftmaxLoss(), opt, train_data=loader, hooks=[dist.epoch_hooks(model, sampler)]
    )
    metrics = [result.train for result in trainer.fit(args.epochs)]
    write(
        args.out,
        {"checksum": dist.parameter_checksum(model), "metrics": metrics, "steps": len(loader)},
        dict(model.state_dict()),
    )


def fail(args):
    """Rank 1 raises after the first collective; rank 0 carries on into the next ones."""
    grad_source = small_model(seed=0)
    for step in range(1000):
        for p in grad_source.parameters():
            p.grad = ndl.Tensor(np.ones(p.shape), device=device())
        dist.allreduce_gradients(grad_source)
        if dist.rank() == 1 and step == 0:
            raise RuntimeError("simulated failure on rank 1")
        time.sleep(0.01)
    write(args.out, {"finished": True})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=("collectives", "train", "fail"))
    parser.add_argument("out")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=70)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    dist.init()
    globals()[args.scenario](args)
    sys.exit(0)
