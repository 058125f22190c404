"""needle.data: datasets on real MNIST/PTB files, a CIFAR-format file written here, the
DataLoader's epoch and batch contract, transforms against NumPy references, loader errors."""

import codecs
import gzip
import math
import os
import pickle
import shutil
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

import needle as ndl
from needle import data

# Real data: $NEEDLE_DATA_DIR/mnist and $NEEDLE_DATA_DIR/ptb when the variable is set, else the
# MNIST test split that needle ships (and no PTB: those tests skip).
MNIST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
MNIST_DIR = data.find_data_dir("mnist", *MNIST_FILES)
PTB_DIR = data.find_data_dir("ptb", "ptb.valid.txt", "ptb.test.txt")
MNIST_IMAGES, MNIST_LABELS = (MNIST_DIR / f if MNIST_DIR else Path(f) for f in MNIST_FILES)

needs_mnist = pytest.mark.skipif(
    MNIST_DIR is None,
    reason="MNIST test files not found (set NEEDLE_DATA_DIR to a folder with mnist/t10k-*.gz)",
)
needs_ptb = pytest.mark.skipif(
    PTB_DIR is None,
    reason="PTB text not found (set NEEDLE_DATA_DIR "
    "to a folder with ptb/ptb.valid.txt and ptb/ptb.test.txt)",
)


# ----------------------------------------------------------------------------- helpers


def reference_idx(path):
    """An independent IDX reader: magic, dimension sizes, then unsigned bytes."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    assert (zero, dtype_code) == (0, 0x08)  # unsigned byte data
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    values = np.array(list(raw[4 + 4 * ndim :]), dtype=np.uint8)
    return values.reshape(dims)


def write_idx(path, magic, dims, payload, compress=True):
    raw = struct.pack(f">{1 + len(dims)}I", magic, *dims) + bytes(payload)
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_cifar_batch(path, data, labels, bytes_keys=True, protocol=None):
    # As the published batches: labels a list of Python ints, data a uint8 array.
    batch = {"data": data, "labels": [int(v) for v in labels], "batch_label": "test"}
    if bytes_keys:
        batch = {k.encode(): v for k, v in batch.items()}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)


def epoch_ids(loader):
    """The sample ids of one epoch over NDArrayDataset(ids), batch by batch."""
    return [batch[0].numpy().astype(np.int64) for batch in loader]


# ----------------------------------------------------------------------------- where data is


def test_needle_data_dir_comes_first_then_the_shipped_files(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_VARIABLE, raising=False)
    shipped = data.shipped_data_dir()
    assert data.find_data_dir("mnist", *MNIST_FILES) == shipped
    assert data.find_data_dir("ptb", "ptb.valid.txt") is None  # not shipped
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    write_idx(mnist / MNIST_FILES[0], 2051, (1, 28, 28), bytes(784))
    write_idx(mnist / MNIST_FILES[1], 2049, (1,), bytes(1))
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.valid.txt").write_text("a b <eos>\n")
    monkeypatch.setenv(data.DATA_DIR_VARIABLE, str(tmp_path))
    assert data.find_data_dir("mnist", *MNIST_FILES) == mnist
    assert len(data.MNISTDataset(*(str(mnist / f) for f in MNIST_FILES))) == 1
    assert data.find_data_dir("ptb", "ptb.valid.txt") == tmp_path / "ptb"
    # A data set the folder lacks (in part) comes from the shipped files, or is missing.
    (mnist / MNIST_FILES[1]).unlink()
    assert data.find_data_dir("mnist", *MNIST_FILES) == shipped
    assert data.find_data_dir("ptb", "ptb.valid.txt", "ptb.test.txt") is None


def test_tests_reach_no_data_outside_the_repository():
    # Data comes from NEEDLE_DATA_DIR or the package, so a clone anywhere runs the same tests.
    word = "sha" + "red"  # spelled apart, so that this test does not find itself
    outside = ("../" + word, "/wo" + "rk/", word + "/data", f'"{word}"', f"'{word}'")
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        found = [s for s in outside if s in text]
        assert not found, f"{path.name} refers to {found}: use needle.data.find_data_dir"


# ----------------------------------------------------------------------------- MNIST


@pytest.fixture(scope="module")
def mnist():
    if MNIST_DIR is None:
        pytest.skip("MNIST test files not found (NEEDLE_DATA_DIR, shipped data)")
    return data.parse_mnist(str(MNIST_IMAGES), str(MNIST_LABELS))


@needs_mnist
def test_parse_mnist_shapes_range_and_labels(mnist):
    X, y = mnist
    assert X.shape == (10000, 784) and X.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.uint8
    assert X.min() == 0.0 and X.max() == 1.0
    counts = np.bincount(y, minlength=10)
    assert len(counts) == 10 and counts.sum() == 10000
    # The t10k classes run from 892 (digit 5) to 1135 (digit 1) images: balanced within 15%.
    assert np.all(np.abs(counts - 1000) <= 150), counts


@needs_mnist
def test_parse_mnist_matches_independent_reader(mnist):
    X, y = mnist
    images = reference_idx(MNIST_IMAGES)
    labels = reference_idx(MNIST_LABELS)
    assert images.shape == (10000, 28, 28)
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(X, images.reshape(10000, 784).astype(np.float32) / 255)


@needs_mnist
def test_mnist_dataset_items_and_slices():
    ds = data.MNISTDataset(str(MNIST_IMAGES), str(MNIST_LABELS))
    assert len(ds) == 10000
    x, y = ds[3]
    assert x.shape == (784,) and x.dtype == np.float32 and 0 <= y <= 9
    xs, ys = ds[10:15]
    assert xs.shape == (5, 784) and ys.shape == (5,)
    np.testing.assert_array_equal(xs[0], ds[10][0])

    flip = data.MNISTDataset(
        str(MNIST_IMAGES), str(MNIST_LABELS), transforms=[data.RandomFlipHorizontal(p=1.0)]
    )
    fx, fy = flip[3]  # transforms see (28, 28, 1); items stay flat, as the course's
    assert fx.shape == (784,) and fy == y
    np.testing.assert_array_equal(fx.reshape(28, 28), x.reshape(28, 28)[:, ::-1])
    assert flip[[3, 4]][0].shape == (2, 784)


def test_mnist_missing_file_names_it(tmp_path):
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    with pytest.raises(FileNotFoundError) as info:
        data.MNISTDataset(str(images), str(tmp_path / "labels.gz"))
    message = str(info.value)
    assert str(images) in message and "--data-dir" in message and "MNIST" in message


def test_mnist_corrupt_files_raise_value_error(tmp_path):
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8)
    good_images = write_idx(tmp_path / "img.gz", 0x803, (2, 3, 4), pixels)
    good_labels = write_idx(tmp_path / "lab.gz", 0x801, (2,), [3, 7])
    X, y = data.parse_mnist(good_images, good_labels)
    np.testing.assert_allclose(X, pixels.reshape(2, 12) / 255)
    np.testing.assert_array_equal(y, [3, 7])
    raw = write_idx(tmp_path / "raw-img", 0x803, (2, 3, 4), pixels, compress=False)
    np.testing.assert_array_equal(data.parse_mnist(raw, good_labels)[0], X)  # plain IDX too

    cases = {
        "magic": (write_idx(tmp_path / "m.gz", 0x1234, (2, 3, 4), pixels), good_labels),
        "swapped": (good_labels, good_images),
        "size": (write_idx(tmp_path / "s.gz", 0x803, (2, 3, 4), pixels[:-1]), good_labels),
        "count": (good_images, write_idx(tmp_path / "c.gz", 0x801, (3,), [1, 2, 3])),
    }
    bad_gzip = tmp_path / "g.gz"
    bad_gzip.write_bytes(gzip.compress(b"\0" * 64)[:20])
    cases["gzip"] = (bad_gzip, good_labels)
    short = tmp_path / "h.gz"
    short.write_bytes(gzip.compress(b"\0\0\x08"))
    cases["header"] = (short, good_labels)
    for what, (images, labels) in cases.items():
        with pytest.raises(ValueError) as info:
            data.parse_mnist(images, labels)
        assert str(images) in str(info.value), what
    with pytest.raises(ValueError, match="bad magic number"):
        data.parse_mnist(*cases["magic"])
    with pytest.raises(ValueError, match="wrong size"):
        data.parse_mnist(*cases["size"])


def test_mnist_header_is_checked_before_the_data_is_read(tmp_path):
    labels = write_idx(tmp_path / "lab.gz", 0x801, (2,), [3, 7])
    # Headers promising 10**12 bytes, or a product past int64, are refused before any data is
    # read; the file itself holds a few bytes.
    for dims in [(10**6, 10**3, 10**3), (2**32 - 1,) * 3, (2, 2**16, 2**14 + 1)]:
        images = write_idx(tmp_path / "big.gz", 0x803, dims, bytes(64))
        with pytest.raises(ValueError, match=r"promises .*MAX_IDX_BYTES.*refused unread") as info:
            data.parse_mnist(images, labels)
        assert str(images) in str(info.value) and str(math.prod(dims)) in str(info.value)
    # A gzip bomb: the header promises 2x3x4 bytes, the stream inflates to 64 MiB of zeros from
    # a ~64 KiB file. It is refused having read one byte past the promise, not all of it.
    bomb = tmp_path / "bomb.gz"
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip container
    parts = [squeeze.compress(struct.pack(">4I", 0x803, 2, 3, 4))]
    parts += [squeeze.compress(bytes(1 << 20)) for _ in range(64)] + [squeeze.flush()]
    bomb.write_bytes(b"".join(parts))
    assert bomb.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"wrong size.*holds more than 40 bytes"):
            data.parse_mnist(bomb, labels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak
    # A header that promises more than the file holds (plain and gzip) names what it found.
    for compress in (True, False):
        short = write_idx(tmp_path / "short", 0x803, (10, 10, 10), bytes(10), compress)
        with pytest.raises(ValueError, match=r"wrong size.*1016 bytes.*holds 26 bytes"):
            data.parse_mnist(short, labels)


# ----------------------------------------------------------------------------- CIFAR-10


@pytest.fixture
def cifar_dir(tmp_path):
    rng = np.random.default_rng(0)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images = rng.integers(0, 256, size=(3 + i, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=3 + i)
        write_cifar_batch(tmp_path / name, images, labels, bytes_keys=(i % 2 == 0))
        batches[name] = (images, labels)
    return tmp_path, batches


def test_cifar10_train_and_test(cifar_dir):
    folder, batches = cifar_dir
    train = data.CIFAR10Dataset(str(folder), train=True)
    images = np.concatenate([batches[f"data_batch_{k}"][0] for k in range(1, 6)])
    labels = np.concatenate([batches[f"data_batch_{k}"][1] for k in range(1, 6)])
    assert len(train) == len(images) == 3 + 4 + 5 + 6 + 7
    assert train.X.shape == (len(images), 3, 32, 32) and train.X.dtype == np.float32
    np.testing.assert_allclose(train.X, images.reshape(-1, 3, 32, 32) / 255, rtol=1e-6)
    np.testing.assert_array_equal(train.y, labels)
    x, y = train[7]
    assert x.shape == (3, 32, 32) and y == labels[7]

    test = data.CIFAR10Dataset(folder, train=False)
    assert len(test) == 8
    np.testing.assert_array_equal(test.y, batches["test_batch"][1])

    flipped = data.CIFAR10Dataset(
        folder, train=False, transforms=[data.RandomFlipHorizontal(p=1.0)]
    )
    fx, _ = flipped[2]
    assert fx.shape == (3, 32, 32)
    np.testing.assert_array_equal(fx, test[2][0][:, :, ::-1])  # flips the width axis


def test_cifar10_errors(cifar_dir):
    folder, _ = cifar_dir
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError) as info:
        data.CIFAR10Dataset(str(folder), train=True)
    assert str(folder / "data_batch_3") in str(info.value) and "--data-dir" in str(info.value)

    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="test_batch"):
        data.CIFAR10Dataset(str(folder), train=False)
    write_cifar_batch(folder / "test_batch", np.zeros((2, 100), np.uint8), [0, 1])
    with pytest.raises(ValueError, match=r"test_batch.*shape"):
        data.CIFAR10Dataset(str(folder), train=False)


class _RunsCode:
    """A pickle payload that calls `function(*args)` when it is loaded."""

    def __init__(self, function, *args):
        self.call = (function, args)

    def __reduce__(self):
        return self.call


def test_cifar10_refuses_a_pickle_that_runs_code(cifar_dir, tmp_path_factory):
    folder, _ = cifar_dir
    marker = tmp_path_factory.mktemp("marker") / "ran"
    images = np.zeros((2, 3072), np.uint8)
    payloads = {
        "system": _RunsCode(os.system, f"touch {marker}"),
        "exec": _RunsCode(exec, f"open({str(marker)!r}, 'w').close()"),
        "open": _RunsCode(open, str(marker), "w"),
    }
    for name, payload in payloads.items():
        for protocol in (2, pickle.HIGHEST_PROTOCOL):
            batch = {b"data": images, b"labels": [0, 1], b"batch_label": payload}
            (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
            with pytest.raises(ValueError, match="refused") as info:
                data.CIFAR10Dataset(str(folder), train=False)
            assert str(folder / "test_batch") in str(info.value) and f".{name}," in str(info.value)
            assert not marker.exists(), (name, protocol)
    # _codecs.encode is allowed only for the latin1 bytes of protocols 0-2.
    rot13 = _RunsCode(codecs.encode, "abc", "rot13")
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": rot13}, protocol=2))
    with pytest.raises(ValueError, match=r"refused.*rot13"):
        data.CIFAR10Dataset(str(folder), train=False)


def test_cifar10_reads_genuine_batch_formats(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    labels = [3, 0, 9, 5]
    batch = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": labels,
        b"data": images,
        b"filenames": [b"a.png", b"b.png", b"c.png", b"d.png"],
    }
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        raw = pickle.dumps(batch, protocol=protocol)
        (tmp_path / "test_batch").write_bytes(raw)
        test = data.CIFAR10Dataset(tmp_path, train=False)
        np.testing.assert_array_equal(test.y, labels)
        np.testing.assert_array_equal(test.X.reshape(4, -1), images / np.float32(255))
    # Protocol 2 writes bytes through _codecs.encode(..., "latin1"), and the published batches
    # (pickled by NumPy 1) name numpy.core.multiarray._reconstruct: both load.
    raw = pickle.dumps(batch, protocol=2)
    assert b"_codecs\nencode" in raw and b"latin1" in raw
    raw = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in raw
    (tmp_path / "test_batch").write_bytes(raw)
    np.testing.assert_array_equal(data.CIFAR10Dataset(tmp_path, train=False).y, labels)


# ----------------------------------------------------------------------------- PTB


@pytest.fixture(scope="module")
def ptb_corpus(tmp_path_factory):
    if PTB_DIR is None:
        pytest.skip("PTB text not found (set NEEDLE_DATA_DIR to a folder with ptb/)")
    folder = tmp_path_factory.mktemp("ptb")
    shutil.copy(PTB_DIR / "ptb.valid.txt", folder / "train.txt")
    shutil.copy(PTB_DIR / "ptb.test.txt", folder / "test.txt")
    return data.Corpus(str(folder))


@needs_ptb
def test_ptb_corpus_tokens(ptb_corpus):
    corpus = ptb_corpus
    lines = (PTB_DIR / "ptb.valid.txt").read_text(encoding="utf-8").splitlines()
    # This copy already ends every line with <eos>; the corpus appends one more to every
    # line all the same, as the course's tokenize does.
    assert all(line.split()[-1] == "<eos>" for line in lines)
    words = [w for line in lines for w in line.split() + ["<eos>"]]
    assert "<eos>" in corpus.dictionary.word2idx
    assert len(corpus.train) == len(words)
    assert [corpus.dictionary.idx2word[i] for i in corpus.train] == words
    eos = corpus.dictionary.word2idx["<eos>"]
    assert corpus.train.count(eos) == 2 * len(lines)
    assert (
        len(corpus.dictionary)
        == len(corpus.dictionary.idx2word)
        == len(set(words) | {corpus.dictionary.idx2word[i] for i in corpus.test})
    )
    assert corpus.valid is None and len(corpus.test) > 50000


@needs_ptb
def test_ptb_mikolov_names_and_max_lines(tmp_path):
    shutil.copy(PTB_DIR / "ptb.valid.txt", tmp_path / "ptb.train.txt")
    shutil.copy(PTB_DIR / "ptb.test.txt", tmp_path / "ptb.test.txt")
    (tmp_path / "ptb.valid.txt").write_text("a b\nc\n", encoding="utf-8")
    corpus = data.Corpus(tmp_path, max_lines=3)
    # Each of these lines ends in <eos> and gets one more.
    assert corpus.train.count(corpus.dictionary.word2idx["<eos>"]) == 6
    assert [corpus.dictionary.idx2word[i] for i in corpus.valid] == [
        "a",
        "b",
        "<eos>",
        "c",
        "<eos>",
    ]


def test_ptb_non_utf8_file_names_the_file_and_line(tmp_path):
    (tmp_path / "train.txt").write_bytes("a b\nc d é\n".encode() + b"e \xff f\ng\n")
    (tmp_path / "test.txt").write_text("a\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not UTF-8") as info:
        data.Corpus(tmp_path)
    assert f"{tmp_path / 'train.txt'}, line 3" in str(info.value)
    corpus = data.Corpus(tmp_path, max_lines=2)  # the bad line is never reached
    assert [corpus.dictionary.idx2word[i] for i in corpus.train][-2:] == ["é", "<eos>"]


def test_ptb_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        data.Corpus(str(tmp_path))
    assert str(tmp_path / "train.txt") in str(info.value)
    assert "ptb.train.txt" in str(info.value) and "--data-dir" in str(info.value)


@needs_ptb
def test_batchify_and_get_batch(ptb_corpus, device):
    ids = ptb_corpus.train
    batch_size, bptt = 16, 35
    batches = data.batchify(ids, batch_size=batch_size, device=device, dtype="float32")
    nbatch = len(ids) // batch_size
    assert batches.shape == (nbatch, batch_size)
    np.testing.assert_array_equal(batches[:, 1], ids[nbatch : 2 * nbatch])  # contiguous columns

    X, y = data.get_batch(batches, 5, bptt, device=device, dtype="float32")
    assert isinstance(X, ndl.Tensor) and X.shape == (bptt, batch_size)
    assert y.shape == (bptt * batch_size,) and X.device == device and not X.requires_grad
    np.testing.assert_array_equal(X.numpy(), batches[5 : 5 + bptt])
    # Targets are the inputs shifted one step along the sequence axis.
    np.testing.assert_array_equal(y.numpy().reshape(bptt, batch_size)[:-1], X.numpy()[1:])
    np.testing.assert_array_equal(y.numpy().reshape(bptt, batch_size)[-1], batches[5 + bptt])

    X, y = data.get_batch(batches, nbatch - 10, bptt, device=device)
    assert X.shape == (9, batch_size) and y.shape == (9 * batch_size,)  # short last window


# ----------------------------------------------------------------------------- DataLoader


def test_dataloader_shuffle_covers_every_sample_each_epoch():
    n, batch_size = 103, 10
    ds = data.NDArrayDataset(np.arange(n), np.arange(n) * 2)
    loader = data.DataLoader(ds, batch_size=batch_size, shuffle=True, generator=7)
    assert len(loader) == 11
    epochs = []
    for _ in range(3):
        batches = epoch_ids(loader)
        assert [len(b) for b in batches] == [10] * 10 + [3]
        order = np.concatenate(batches)
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
        epochs.append(order)
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    again = data.DataLoader(ds, batch_size=batch_size, shuffle=True, generator=7)
    for expected in epochs:  # the same seed replays the same sequence of epochs
        np.testing.assert_array_equal(np.concatenate(epoch_ids(again)), expected)

    rng = np.random.default_rng(3)
    first = np.concatenate(epoch_ids(data.DataLoader(ds, 10, shuffle=True, generator=rng)))
    np.testing.assert_array_equal(first, np.random.default_rng(3).permutation(n))

    np.random.seed(5)  # generator=None: NumPy's global generator, as the course
    course = np.concatenate(epoch_ids(data.DataLoader(ds, 10, shuffle=True)))
    np.random.seed(5)
    np.testing.assert_array_equal(course, np.random.permutation(n))

    for x, y in data.DataLoader(ds, batch_size=batch_size, shuffle=True, generator=1):
        np.testing.assert_array_equal(y.numpy(), 2 * x.numpy())  # fields stay paired


def test_dataloader_order_drop_last_and_len():
    ds = data.NDArrayDataset(np.arange(10))
    assert np.concatenate(epoch_ids(data.DataLoader(ds, 4))).tolist() == list(range(10))
    dropped = data.DataLoader(ds, batch_size=4, drop_last=True)
    assert len(dropped) == 2 and [b.tolist() for b in epoch_ids(dropped)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
    ]
    assert len(data.DataLoader(ds, batch_size=4)) == 3
    assert len(data.DataLoader(ds, batch_size=5, drop_last=True)) == 2
    assert len(data.DataLoader(ds)) == 10
    shuffled = data.DataLoader(ds, batch_size=3, shuffle=True, drop_last=True, generator=0)
    assert [len(b) for b in epoch_ids(shuffled)] == [3, 3, 3]
    with pytest.raises(ValueError):
        data.DataLoader(ds, batch_size=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dataloader_batches_are_tensors(device, dtype):
    X = np.random.randn(7, 2, 3).astype(np.float32)
    y = np.arange(7, dtype=np.uint8)
    loader = data.DataLoader(data.NDArrayDataset(X, y), batch_size=4, device=device, dtype=dtype)
    batches = list(loader)
    assert len(batches) == 2 and all(isinstance(b, tuple) and len(b) == 2 for b in batches)
    xb, yb = batches[0]
    assert isinstance(xb, ndl.Tensor) and xb.shape == (4, 2, 3) and yb.shape == (4,)
    assert xb.dtype == dtype and xb.device == yb.device == device
    assert yb.dtype == "uint8"  # labels keep their integer dtype, whatever `dtype` says
    assert not xb.requires_grad and not yb.requires_grad
    np.testing.assert_allclose(xb.numpy(), X[:4], rtol=1e-6)
    np.testing.assert_array_equal(yb.numpy(), [0, 1, 2, 3])
    np.testing.assert_array_equal(ndl.init.one_hot(10, yb, device=device).numpy(), np.eye(10)[:4])


class SquaresDataset(data.Dataset):
    """A general dataset: items built one at a time, one with a Python int label."""

    def __len__(self):
        return 9

    def __getitem__(self, i):
        return np.full((2, 2), i * i, dtype=np.float32), i


def test_dataloader_general_dataset_and_single_field():
    xb, yb = next(iter(data.DataLoader(SquaresDataset(), batch_size=4, shuffle=False)))
    assert xb.shape == (4, 2, 2) and yb.shape == (4,)
    np.testing.assert_array_equal(xb.numpy()[:, 0, 0], [0, 1, 4, 9])

    single = data.DataLoader([np.array([i, i]) for i in range(5)], batch_size=2)
    batches = list(single)
    assert len(batches) == 3 and len(batches[0]) == 1 and batches[2][0].shape == (1, 2)


@needs_mnist
def test_dataloader_mnist_with_transforms():
    transforms = [data.RandomCrop(4, generator=0), data.RandomFlipHorizontal(generator=1)]
    ds = data.MNISTDataset(str(MNIST_IMAGES), str(MNIST_LABELS), transforms=transforms)
    subset = data.Subset(ds, np.arange(250))
    loader = data.DataLoader(subset, batch_size=64, shuffle=True, generator=2)
    seen = []
    for xb, yb in loader:
        assert xb.shape[1:] == (784,) and xb.shape[0] == yb.shape[0] and yb.dtype == "uint8"
        seen.append(yb.numpy())
    assert sum(len(s) for s in seen) == 250
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.sort(ds.y[:250]))

    plain = data.MNISTDataset(str(MNIST_IMAGES), str(MNIST_LABELS))
    xb, yb = next(iter(data.DataLoader(plain, batch_size=8)))
    assert xb.shape == (8, 784)
    np.testing.assert_array_equal(xb.numpy(), plain.X[:8])


def test_random_split_and_subset():
    ds = data.NDArrayDataset(np.arange(10000))
    train, valid = data.random_split(ds, [8000, 2000], generator=0)
    assert len(train) == 8000 and len(valid) == 2000
    ids = np.concatenate([train.indices, valid.indices])
    np.testing.assert_array_equal(np.sort(ids), np.arange(10000))
    again, _ = data.random_split(ds, [8000, 2000], generator=0)
    np.testing.assert_array_equal(again.indices, train.indices)
    assert train[3][0] == train.indices[3]
    np.testing.assert_array_equal(train[:5][0], train.indices[:5])

    parts = data.random_split(data.NDArrayDataset(np.arange(11)), [0.5, 0.3, 0.2], generator=1)
    assert [len(p) for p in parts] == [6, 3, 2]
    with pytest.raises(ValueError):
        data.random_split(ds, [8000, 1999])
    with pytest.raises(IndexError):
        data.Subset(ds, [10000])

    loader = data.DataLoader(valid, batch_size=300, shuffle=True, generator=4)
    out = np.concatenate(epoch_ids(loader))
    np.testing.assert_array_equal(np.sort(out), np.sort(valid.indices))


def test_ndarray_dataset_checks_lengths():
    with pytest.raises(ValueError):
        data.NDArrayDataset(np.zeros(3), np.zeros(4))
    ds = data.NDArrayDataset(np.zeros((3, 2)), np.ones(3))
    assert len(ds) == 3 and ds[1][0].shape == (2,)


# ----------------------------------------------------------------------------- transforms


def reference_crop(img, padding, shift_x, shift_y):
    """Zero-padded shift, written out with explicit loops over output pixels."""
    height, width = img.shape[:2]
    out = np.zeros_like(img)
    for r in range(height):
        for c in range(width):
            rr, cc = r + shift_x, c + shift_y
            if 0 <= rr < height and 0 <= cc < width:
                out[r, c] = img[rr, cc]
    return out


def test_random_crop_against_reference():
    img = np.random.rand(8, 6, 3).astype(np.float32)
    crop = data.RandomCrop(padding=3, generator=11)
    shifts = np.random.default_rng(11)
    for _ in range(20):
        shift_x, shift_y = shifts.integers(-3, 4, size=2)
        out = crop(img)
        assert out.shape == img.shape
        np.testing.assert_array_equal(out, reference_crop(img, 3, shift_x, shift_y))
    np.testing.assert_array_equal(data.RandomCrop(padding=0)(img), img)
    gray = np.arange(20.0).reshape(4, 5)
    np.testing.assert_array_equal(data.RandomCrop(2, generator=0)(gray).shape, (4, 5))

    np.random.seed(0)  # generator=None draws from np.random as the course's RandomCrop
    out = data.RandomCrop(2)(img)
    np.random.seed(0)
    shift_x, shift_y = np.random.randint(low=-2, high=3, size=2)
    np.testing.assert_array_equal(out, reference_crop(img, 2, shift_x, shift_y))


def test_random_flip_against_reference():
    img = np.random.rand(5, 4, 2)
    np.testing.assert_array_equal(data.RandomFlipHorizontal(p=1.0)(img), img[:, ::-1, :])
    np.testing.assert_array_equal(data.RandomFlipHorizontal(p=0.0)(img), img)
    flip = data.RandomFlipHorizontal(p=0.4, generator=np.random.default_rng(9))
    draws = np.random.default_rng(9)
    flips = 0
    for _ in range(200):
        expected = img[:, ::-1, :] if draws.random() < 0.4 else img
        flips += expected is not img
        np.testing.assert_array_equal(flip(img), expected)
    assert 50 < flips < 110

    np.random.seed(1)
    outs = [data.RandomFlipHorizontal(0.5)(img) for _ in range(10)]
    np.random.seed(1)
    for out in outs:
        flipped = np.random.rand() < 0.5
        np.testing.assert_array_equal(out, img[:, ::-1, :] if flipped else img)
