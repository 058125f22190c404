"""Fit a two-layer MLP to generated spiral data with needle's autograd.

The main job until the nn/optim/data layers land: it builds the model from raw Tensor ops,
trains it with plain SGD on the best available device and reports loss and accuracy.

    python apps/train_demo.py [--device cpu|cpu_numpy|cuda] [--epochs 300]
"""

import argparse
import time

import numpy as np

import needle as ndl


def make_spirals(points_per_class: int, classes: int, rng: np.random.Generator):
    """Interleaved noisy spirals, one per class: (n, 2) float32 points and (n,) labels."""
    xs, ys = [], []
    for c in range(classes):
        r = np.linspace(0.05, 1.0, points_per_class)
        t = np.linspace(c * 4.0, (c + 1) * 4.0, points_per_class) + rng.normal(0, 0.2, points_per_class)
        xs.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1))
        ys.append(np.full(points_per_class, c))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def best_device():
    for device in (ndl.cuda(), ndl.cpu()):
        if device.enabled():
            return device
    return ndl.cpu_numpy()


def softmax_loss(logits: ndl.Tensor, y_one_hot: ndl.Tensor) -> ndl.Tensor:
    """Mean cross-entropy from logits: logsumexp(z) - z_y."""
    n = logits.shape[0]
    return (ndl.logsumexp(logits, axes=(1,)) - (logits * y_one_hot).sum(axes=(1,))).sum() / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cpu_numpy", "cuda"], default=None)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = getattr(ndl, args.device)() if args.device else best_device()
    rng = np.random.default_rng(args.seed)
    np.random.seed(args.seed)
    x_np, y_np = make_spirals(200, 3, rng)
    x = ndl.Tensor(x_np, device=device, requires_grad=False)
    y = ndl.init.one_hot(3, y_np, device=device)

    w1 = ndl.init.kaiming_uniform(2, args.hidden, device=device, requires_grad=True)
    b1 = ndl.init.zeros(1, args.hidden, device=device, requires_grad=True)
    w2 = ndl.init.kaiming_uniform(args.hidden, 3, device=device, requires_grad=True)
    b2 = ndl.init.zeros(1, 3, device=device, requires_grad=True)
    params = [w1, b1, w2, b2]

    print(f"needle {ndl.__version__}: MLP 2-{args.hidden}-3 on {len(y_np)} spiral points, "
          f"device {device}")
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        logits = (x @ w1 + b1).relu() @ w2 + b2
        loss = softmax_loss(logits, y)
        loss.backward()
        for p in params:
            p.data = p.data - p.grad * args.lr
        if epoch == 1 or epoch % 50 == 0:
            accuracy = (logits.numpy().argmax(axis=1) == y_np).mean()
            print(f"epoch {epoch:4d}  loss {loss.item():.4f}  train accuracy {accuracy:.3f}")
    elapsed = time.perf_counter() - start
    accuracy = (((x @ w1 + b1).relu() @ w2 + b2).numpy().argmax(axis=1) == y_np).mean()
    print(f"final train accuracy {accuracy:.3f} ({elapsed:.1f} s, "
          f"{1000 * elapsed / args.epochs:.1f} ms per step)")


if __name__ == "__main__":
    main()
