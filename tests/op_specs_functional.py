"""The op-spec table's entries for needle.ops.ops_functional (issue 16); see op_specs.py.

Images are NCHW in needle's functional ops as in torch.nn.functional, so the torch references
take the same arrays without permuting them.
"""

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from op_specs import POSITIVE, REAL, Error, OpSpec, Sample, uniform

import needle as ndl
from needle import ops

PROB = uniform(0.0, 1.0)
# Class labels with ignored entries (torch's default ignore_index -100, and 3 for a custom one).
LABELS = np.array([0, 4, 2, 2, 1, 3, 4])
IGNORED = np.array([0, -100, 2, 3, 1, 3, -100])
CLASS_WEIGHTS = np.array([0.5, 2.0, 1.0, 0.25, 3.0])
# A boolean attention mask (True attends) with at least one True per row.
MASK = np.array(
    [
        [1, 0, 1, 1, 0, 1],
        [0, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1],
        [0, 0, 0, 0, 0, 1],
        [1, 0, 0, 1, 0, 0],
    ],
    dtype=bool,
)


def torch_labels(target):
    return torch.tensor(np.asarray(target), dtype=torch.long)


def torch_cross_entropy(z, target, weight=None, **kwargs):
    if weight is not None:
        kwargs["weight"] = torch.tensor(np.asarray(weight), dtype=z.dtype)
    if target.dtype.kind == "f":  # class probabilities
        return F.cross_entropy(z, torch.tensor(target, dtype=z.dtype), **kwargs)
    return F.cross_entropy(z, torch_labels(target), **kwargs)


def cross_entropy_weight_tensor(z, target, weight=None, **kwargs):
    """cross_entropy with the class weights as a needle Tensor (the samples give NumPy)."""
    if weight is not None:
        weight = ndl.Tensor(weight, device=z.device, requires_grad=False)
    return ops.cross_entropy(z, target, weight, **kwargs)


def torch_sdpa(q, k, v, attn_mask=None, **kwargs):
    mask = None if attn_mask is None else torch.tensor(attn_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs)


def pool_errors(name):
    return [
        Error([(2, 3, 4)], {"kernel_size": 2}, ValueError, rf"^{name}: needs a 4-D NCHW input"),
        Error([(1, 2, 4, 4)], {"kernel_size": 2, "padding": 2}, ValueError, rf"^{name}: padding"),
        Error([(1, 2, 2, 2)], {"kernel_size": 3, "padding": 0}, ValueError, r"larger than"),
        Error([(1, 2, 4, 4)], {"kernel_size": 0}, ValueError, rf"^{name}: need kernel_size"),
    ]


POOL_SAMPLES = [
    Sample((2, 3, 6, 5), kernel_size=2),  # stride = kernel: windows tile
    Sample((2, 3, 7, 6), kernel_size=3, stride=2, padding=1),  # overlapping, padded
    Sample((1, 2, 5, 5), kernel_size=3, stride=1),
    Sample((2, 1, 6, 7), kernel_size=(2, 3), stride=(2, 1), padding=(1, 0)),
    Sample((1, 2, 1, 4), kernel_size=(1, 2)),
]


@st.composite
def pool_samples(draw):
    """Random pooling geometry: kernel, stride, padding (at most half the kernel) and an
    input at least as large as the padded kernel."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 8))
    w = draw(st.integers(max(1, kw - 2 * pw), 8))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    return Sample((n, c, h, w), kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, pw))


SPECS: list = [
    # ---- losses
    OpSpec(
        ops.MSELoss,
        ops.mse_loss,
        F.mse_loss,
        [
            Sample((3, 4), (3, 4)),
            Sample((2, 3, 4), (2, 3, 4), reduction="sum"),
            Sample((5,), (5,), reduction="none"),
            Sample((), ()),
        ],
        errors=[
            Error(
                [(3, 4), (3, 5)], {}, ValueError, r"^mse_loss: input \(3, 4\) and target \(3, 5\)"
            ),
            Error([(3,), (3,)], {"reduction": "max"}, ValueError, r"^mse_loss: reduction"),
        ],
    ),
    OpSpec(
        ops.L1Loss,
        ops.l1_loss,
        F.l1_loss,
        [
            Sample((3, 4), (3, 4)),
            Sample((2, 3, 4), (2, 3, 4), reduction="sum"),
            Sample((5,), (5,), reduction="none"),
        ],
        errors=[
            Error([(3, 4), (4,)], {}, ValueError, r"^l1_loss: input \(3, 4\) and target \(4,\)")
        ],
    ),
    OpSpec(
        ops.BCEWithLogits,
        ops.binary_cross_entropy_with_logits,
        F.binary_cross_entropy_with_logits,
        [
            Sample((3, 4), (3, 4)),
            Sample((2, 5), (2, 5), reduction="sum"),
            Sample((6,), (6,), reduction="none"),
            # Logits far past exp's float32 range: the stable form stays finite.
            Sample(np.array([-200.0, -30.0, 0.0, 40.0, 300.0]), PROB(5), reduction="none"),
        ],
        domain=(uniform(-4.0, 4.0), PROB),
        errors=[
            Error(
                [(3, 4), (3, 4)],
                {"reduction": "avg"},
                ValueError,
                r"^binary_cross_entropy_with_logits: reduction",
            )
        ],
    ),
    OpSpec(
        ops.CrossEntropy,
        ops.cross_entropy,
        torch_cross_entropy,
        [
            Sample((7, 5), target=LABELS),
            Sample((7, 5), target=IGNORED, label_smoothing=0.1),
            Sample((7, 5), target=IGNORED, reduction="sum"),
            Sample((7, 5), target=LABELS, label_smoothing=0.25, reduction="none"),
            Sample((7, 5), target=LABELS, ignore_index=3, reduction="mean"),
            Sample(
                (4, 3),
                target=np.random.RandomState(1).dirichlet(np.ones(3), 4),
                label_smoothing=0.1,
            ),
            # torch's class weights: 'mean' divides by the counted targets' summed weight
            Sample((7, 5), target=LABELS, weight=CLASS_WEIGHTS),
            Sample((7, 5), target=IGNORED, weight=CLASS_WEIGHTS, label_smoothing=0.2),
            Sample((7, 5), target=LABELS, weight=CLASS_WEIGHTS, ignore_index=4, reduction="sum"),
            Sample((7, 5), target=IGNORED, weight=CLASS_WEIGHTS, reduction="none"),
            Sample(
                (4, 3),
                target=np.random.RandomState(2).dirichlet(np.ones(3), 4),
                weight=np.array([0.2, 1.0, 3.0]),
                label_smoothing=0.3,
            ),
        ],
        forms=[cross_entropy_weight_tensor],
        domain=uniform(-4.0, 4.0),
        errors=[
            Error([(7, 5)], {"target": LABELS[:6]}, ValueError, r"^cross_entropy: logits \(7, 5\)"),
            Error([(7, 5)], {"target": LABELS + 1}, IndexError, r"^cross_entropy: .*\[0, 5\)"),
            Error(
                [(7,)], {"target": LABELS}, ValueError, r"^cross_entropy: needs \(batch, classes\)"
            ),
            Error(
                [(7, 5)], {"target": LABELS, "label_smoothing": 2.0}, ValueError, "label_smoothing"
            ),
            Error(
                [(7, 5)],
                {"target": LABELS, "weight": np.ones(4)},
                ValueError,
                r"^cross_entropy: weight must hold one number per class \(5,\), got \(4,\)",
            ),
        ],
    ),
    # ---- linear
    OpSpec(
        ops.Linear,
        ops.linear,
        lambda x, w, *b, in_out=False: F.linear(x, w.T if in_out else w, *b),
        [
            Sample((4, 6), (5, 6), (5,)),
            Sample((2, 3, 6), (5, 6), (5,)),  # leading axes
            Sample((6,), (5, 6)),  # a vector, no bias
            Sample((4, 6), (6, 5), (1, 5), in_out=True),  # nn.Linear's layout and bias
        ],
        errors=[
            Error([(4, 6), (5, 7)], {}, ValueError, r"^linear: input \(4, 6\) does not fit"),
            Error([(4, 6), (5, 6), (4,)], {}, ValueError, r"^linear: bias \(4,\) for 5 outputs"),
            Error([(4, 6), (2, 5, 6)], {}, ValueError, r"^linear: needs .* a 2-D weight"),
        ],
    ),
    # ---- normalisation
    OpSpec(
        ops.LayerNorm,
        ops.layer_norm,
        lambda x, w, b, shape, **kw: F.layer_norm(x, np.atleast_1d(shape).tolist(), w, b, **kw),
        [
            Sample((4, 6), (6,), (6,), shape=(6,)),
            Sample((2, 3, 4, 5), (4, 5), (4, 5), shape=(4, 5)),
            Sample((3, 8), (8,), (8,), shape=8, eps=1e-3),
        ],
        call=lambda x, w, b, shape, **kw: ops.layer_norm(x, shape, w, b, **kw),
        domain=(uniform(-3.0, 3.0), POSITIVE, REAL),
        forms=[lambda x, w, b, shape, **kw: ops.layer_norm(x, shape, **kw) * w + b],
        tol=(1e-4, 1e-5),
        errors=[
            Error(
                [(4, 6), (5,), (5,)], {"shape": (5,)}, ValueError, r"^layer_norm: input \(4, 6\)"
            ),
            Error([(4, 6), (5,), (6,)], {"shape": (6,)}, ValueError, r"^layer_norm: weight \(5,\)"),
        ],
    ),
    OpSpec(
        ops.GroupNorm,
        ops.group_norm,
        lambda x, w, b, groups, **kw: F.group_norm(x, groups, w, b, **kw),
        [
            Sample((2, 6, 3, 4), (6,), (6,), groups=3),
            Sample((3, 4, 5), (4,), (4,), groups=4),
            Sample((2, 4, 2, 2), (4,), (4,), groups=1, eps=1e-3),
        ],
        call=lambda x, w, b, groups, **kw: ops.group_norm(x, groups, w, b, **kw),
        domain=(uniform(-3.0, 3.0), POSITIVE, REAL),
        tol=(1e-4, 1e-5),
        errors=[
            Error(
                [(2, 6, 3), (6,), (6,)],
                {"groups": 4},
                ValueError,
                r"^group_norm: input \(2, 6, 3\)",
            ),
            Error(
                [(2, 6, 3), (3,), (6,)], {"groups": 3}, ValueError, r"^group_norm: weight \(3,\)"
            ),
        ],
    ),
    # ---- attention
    OpSpec(
        ops.ScaledDotProductAttention,
        ops.scaled_dot_product_attention,
        torch_sdpa,
        [
            Sample((2, 5, 4), (2, 6, 4), (2, 6, 3)),
            Sample((2, 3, 6, 4), (2, 3, 6, 4), (2, 3, 6, 4), is_causal=True),
            Sample((2, 5, 4), (2, 6, 4), (2, 6, 3), attn_mask=MASK),
            Sample((2, 5, 4), (2, 6, 4), (2, 6, 3), attn_mask=np.random.RandomState(0).randn(5, 6)),
            Sample((3, 4, 2), (1, 5, 2), (1, 5, 3), scale=0.3),  # keys and values broadcast
        ],
        tol=(1e-4, 1e-5),
        errors=[
            Error(
                [(2, 5, 4), (2, 6, 3), (2, 6, 3)],
                {},
                ValueError,
                r"^scaled_dot_product_attention: query \(2, 5, 4\), key \(2, 6, 3\)",
            ),
            Error(
                [(2, 5, 4), (2, 6, 4), (2, 6, 3)],
                {"attn_mask": np.ones((4, 6), dtype=bool)},
                ValueError,
                r"^scaled_dot_product_attention: attn_mask \(4, 6\)",
            ),
        ],
    ),
    # ---- pooling
    OpSpec(
        ops.MaxPool2d,
        ops.max_pool2d,
        F.max_pool2d,
        POOL_SAMPLES,
        forms=[lambda x, **kw: ops.MaxPool2d(**kw)(x)],
        random=pool_samples(),
        errors=pool_errors("max_pool2d"),
    ),
    OpSpec(
        ops.AvgPool2d,
        ops.avg_pool2d,
        F.avg_pool2d,
        POOL_SAMPLES,
        forms=[lambda x, **kw: ops.AvgPool2d(**kw)(x)],
        random=pool_samples(),
        errors=pool_errors("avg_pool2d"),
    ),
    OpSpec(
        ops.AdaptiveAvgPool2d,
        ops.adaptive_avg_pool2d,
        F.adaptive_avg_pool2d,
        [
            Sample((2, 3, 7, 6), output_size=(3, 2)),  # uneven, overlapping windows
            Sample((2, 3, 8, 8), output_size=4),
            Sample((1, 2, 5, 3), output_size=1),
            Sample((1, 2, 3, 4), output_size=(5, 6)),  # larger than the input
            Sample((1, 2, 5, 4), output_size=(None, 2)),
        ],
        errors=[
            Error(
                [(2, 3, 4)], {"output_size": 2}, ValueError, r"^adaptive_avg_pool2d: needs a 4-D"
            ),
            Error(
                [(1, 2, 3, 4)], {"output_size": 0}, ValueError, r"^adaptive_avg_pool2d: output_size"
            ),
        ],
    ),
    # ---- transposed convolution
    OpSpec(
        ops.ConvTranspose2d,
        ops.conv_transpose2d,
        F.conv_transpose2d,
        [
            # First: the sample of the second-order and central-difference checks, (height,
            # width) pairs on the path that pads and strides each axis apart.
            Sample(
                (2, 2, 3, 3), (2, 2, 3, 3), stride=(3, 2), padding=(2, 1), output_padding=(2, 1)
            ),
            Sample((2, 3, 4, 5), (3, 2, 3, 3)),
            Sample((2, 3, 4, 5), (3, 2, 3, 3), stride=2, padding=1, output_padding=1),
            Sample((1, 2, 3, 3), (2, 4, 2, 2), stride=2),
            Sample((1, 2, 3, 4), (2, 3, 3, 2), stride=3, padding=1),
            # (height, width) pairs, as torch's: unequal strides, paddings, output paddings
            Sample((2, 3, 4, 5), (3, 2, 3, 2), stride=(2, 1), padding=(1, 0)),
            Sample(
                (1, 2, 3, 4), (2, 3, 2, 4), stride=(1, 3), padding=(0, 2), output_padding=(0, 1)
            ),
            Sample((1, 2, 4, 3), (2, 3, 3, 3), stride=(2, 2), padding=(0, 1), output_padding=1),
        ],
        tol=(1e-4, 1e-5),
        errors=[
            Error([(2, 3, 4, 5), (2, 2, 3, 3)], {}, ValueError, r"^conv_transpose2d: needs NCHW"),
            Error(
                [(2, 3, 4, 5), (3, 2, 3, 3)],
                {"padding": 3},
                ValueError,
                r"^conv_transpose2d: padding 3",
            ),
            Error(
                [(2, 3, 4, 5), (3, 2, 3, 3)],
                {"output_padding": 1},
                ValueError,
                r"^conv_transpose2d: need",
            ),
            Error(
                [(2, 3, 4, 5), (3, 2, 3, 2)],
                {"padding": (1, 2)},
                ValueError,
                r"^conv_transpose2d: padding \(1, 2\) must be below the kernel size \(3, 2\)",
            ),
            Error(
                [(2, 3, 4, 5), (3, 2, 3, 3)],
                {"stride": (2, 2, 2)},
                ValueError,
                r"^conv_transpose2d: stride must be an int or a pair of ints",
            ),
        ],
    ),
    # ---- dropout: random masks cannot match torch's, so the samples are its deterministic
    # cases (p = 0 keeps all, p = 1 drops all, training=False is the identity's values).
    OpSpec(
        ops.Dropout,
        ops.dropout,
        F.dropout,
        [Sample((3, 4), p=0.0), Sample((2, 3, 4), p=1.0)],
        errors=[Error([(3, 4)], {"p": 1.5}, ValueError, r"^dropout: p must be in \[0, 1\]")],
    ),
]
