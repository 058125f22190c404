"""COURSE_API section 9 (needle.data), row by row, in both modes (NEEDLE_BACKEND=nd and np).

Randomness is checked draw by draw against NumPy's global RNG; values against NumPy re-computations.
Real data come through needle.data.find_data_dir ($NEEDLE_DATA_DIR, then the shipped MNIST test
split); CIFAR-10 and PTB formats are also written here, small, in tmp_path.
"""

import gzip
import importlib
import pickle
import shutil
import struct

import numpy as np
import pytest

import needle as ndl
from needle import data
from needle.backend_ndarray import NDArray

NP_MODE = ndl.BACKEND == "np"
MNIST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
MNIST_DIR = data.find_data_dir("mnist", *MNIST_FILES)
PTB_DIR = data.find_data_dir("ptb-mikolov", "ptb.train.head20.txt", "ptb.test.txt")


def rng_state():
    return np.random.get_state()[1].copy(), np.random.get_state()[2]


def same_state(a, b):
    return np.array_equal(a[0], b[0]) and a[1] == b[1]


def write_idx(path, magic, shape, values):
    raw = struct.pack(">I", magic) + struct.pack(f">{len(shape)}I", *shape)
    with gzip.open(path, "wb") as f:
        f.write(raw + np.asarray(values, dtype=np.uint8).tobytes())
    return str(path)


def read_idx(path):
    """An independent IDX reader: the header's dims, then the bytes."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8).reshape(dims)


@pytest.fixture
def tiny_mnist(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    return (
        write_idx(tmp_path / "img.gz", 0x803, images.shape, images),
        write_idx(tmp_path / "lab.gz", 0x801, labels.shape, labels),
        images,
        labels,
    )


# ---------------------------------------------------------------------------- layout


def test_names_are_reexported_and_submodules_exist():
    for name in [
        "Transform",
        "RandomFlipHorizontal",
        "RandomCrop",
        "Dataset",
        "DataLoader",
        "NDArrayDataset",
        "MNISTDataset",
        "CIFAR10Dataset",
        "Dictionary",
        "Corpus",
        "batchify",
        "get_batch",
    ]:
        assert hasattr(ndl.data, name), name
    for module in [
        "data_basic",
        "data_transforms",
        "datasets.mnist_dataset",
        "datasets.ndarray_dataset",
        "datasets.cifar10_dataset",
        "datasets.ptb_dataset",
    ]:
        importlib.import_module(f"needle.data.{module}")
    assert issubclass(data.RandomCrop, data.Transform)


# ---------------------------------------------------------------------------- transforms


def test_random_flip_draws_one_rand_per_call_and_flips_axis_1():
    img = np.random.rand(4, 5, 3)
    flip = data.RandomFlipHorizontal(p=0.3)
    np.random.seed(7)
    outs = [flip(img) for _ in range(40)]
    after = rng_state()
    np.random.seed(7)
    draws = [np.random.rand() for _ in range(40)]
    assert same_state(after, rng_state())  # exactly one np.random.rand() per call
    for out, u in zip(outs, draws):
        np.testing.assert_array_equal(out, img[:, ::-1, :] if u < 0.3 else img)
    assert 0 < sum(u < 0.3 for u in draws) < 40
    assert data.RandomFlipHorizontal().p == 0.5


@pytest.mark.parametrize("padding", [0, 1, 3])
def test_random_crop_draws_randint_and_takes_the_window(padding):
    img = np.random.rand(6, 5, 2).astype(np.float32)
    crop = data.RandomCrop(padding=padding)
    np.random.seed(11)
    outs = [crop(img) for _ in range(15)]
    after = rng_state()
    np.random.seed(11)
    padded = np.pad(img, [(padding, padding), (padding, padding), (0, 0)])
    for out in outs:
        shift_x, shift_y = np.random.randint(low=-padding, high=padding + 1, size=2)
        r, c = padding + shift_x, padding + shift_y
        assert out.shape == img.shape
        np.testing.assert_array_equal(out, padded[r : r + 6, c : c + 5])
    assert same_state(after, rng_state())
    assert data.RandomCrop().padding == 3


# ---------------------------------------------------------------------------- Dataset


def test_dataset_transforms_in_list_order_and_abstract_methods():
    assert data.Dataset().transforms is None
    calls = []
    ds = data.Dataset(transforms=[lambda x: calls.append("a") or x + 1, lambda x: x * 10])
    assert ds.apply_transforms(np.array([1.0]))[0] == 20.0  # (1 + 1) * 10, in list order
    assert calls == ["a"] and len(ds.transforms) == 2
    np.testing.assert_array_equal(data.Dataset().apply_transforms(np.ones(2)), np.ones(2))
    with pytest.raises(NotImplementedError):
        data.Dataset()[0]
    with pytest.raises(NotImplementedError):
        len(data.Dataset())


def test_ndarray_dataset_indexing():
    X, y = np.random.rand(9, 2), np.arange(9)
    ds = data.NDArrayDataset(X, y)
    assert len(ds) == 9 and ds.transforms is None
    for index in [4, slice(2, 5), np.array([8, 0, 3])]:
        item = ds[index]
        assert isinstance(item, tuple) and len(item) == 2
        np.testing.assert_array_equal(item[0], X[index])
        np.testing.assert_array_equal(item[1], y[index])


# ---------------------------------------------------------------------------- DataLoader


@pytest.mark.parametrize("n,batch_size", [(10, 3), (9, 3), (2, 5), (7, 1)])
def test_dataloader_ordering_is_array_split(n, batch_size):
    ds = data.NDArrayDataset(np.arange(n, dtype=np.float32))
    loader = data.DataLoader(ds, batch_size=batch_size)
    assert loader.dataset is ds and loader.batch_size == batch_size and loader.shuffle is False
    expected = np.array_split(np.arange(n), range(batch_size, n, batch_size))
    assert len(loader.ordering) == len(expected)
    for got, want in zip(loader.ordering, expected):
        np.testing.assert_array_equal(got, want)
    batches = [b[0].numpy() for b in loader]
    assert [len(b) for b in batches] == [len(e) for e in expected]  # the last may be short
    np.testing.assert_array_equal(np.concatenate(batches), np.arange(n))
    default = data.DataLoader(ds)
    assert default.batch_size == 1 and default.shuffle is False


def test_dataloader_iter_returns_itself_and_reshuffles_at_iter_time():
    n, batch_size = 11, 4
    ds = data.NDArrayDataset(np.arange(n) * 10.0, np.arange(n))
    np.random.seed(0)
    before = rng_state()
    loader = data.DataLoader(ds, batch_size=batch_size, shuffle=True)
    assert same_state(before, rng_state())  # nothing drawn at construction
    np.random.seed(3)
    it = iter(loader)
    assert it is loader and hasattr(loader, "__next__")
    np.random.seed(3)
    perm = np.random.permutation(n)
    expected = np.array_split(perm, range(batch_size, n, batch_size))
    for want in expected:
        x, y = next(loader)
        np.testing.assert_array_equal(y.numpy(), want)
        np.testing.assert_array_equal(x.numpy(), want * 10.0)
    with pytest.raises(StopIteration):
        next(loader)
    # The next epoch draws the next permutation from the global RNG.
    state = np.random.get_state()
    second = np.concatenate([y.numpy() for _, y in loader])
    np.random.set_state(state)
    np.testing.assert_array_equal(second, np.random.permutation(n))


def test_dataloader_batches_are_tuples_of_tensors_with_integer_labels():
    X = np.random.rand(5, 2, 3)  # float64
    y = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    ids = np.arange(5, dtype=np.int64)
    batches = list(data.DataLoader(data.NDArrayDataset(X, y, ids), batch_size=2))
    assert len(batches) == 3
    xb, yb, ib = batches[0]
    assert isinstance(batches[0], tuple)
    assert all(isinstance(t, ndl.Tensor) for t in batches[0])
    assert xb.shape == (2, 2, 3) and yb.shape == (2,) and batches[2][0].shape == (1, 2, 3)
    # Float fields follow Tensor(x) (section 2); labels keep their integer dtype.
    assert xb.dtype == ("float64" if NP_MODE else "float32")
    assert yb.dtype == "uint8" and ib.dtype == "int64"
    assert xb.device == ndl.default_device() and yb.device == ndl.default_device()
    np.testing.assert_allclose(xb.numpy(), X[:2], rtol=1e-6)
    np.testing.assert_array_equal(yb.numpy(), y[:2])
    np.testing.assert_array_equal(ib.numpy(), [0, 1])
    if NP_MODE:
        assert isinstance(xb.cached_data, np.ndarray) and isinstance(yb.cached_data, np.ndarray)
    else:
        assert isinstance(xb.cached_data, NDArray)
    # Optional device/dtype arguments, as one course example passes them.
    xb, yb = next(
        iter(data.DataLoader(data.NDArrayDataset(X, y), 2, device=ndl.cpu(), dtype="float32"))
    )
    assert xb.dtype == "float32" and yb.dtype == "uint8"


def test_dataloader_reads_dataset_with_index_arrays():
    class Recorder(data.Dataset):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __len__(self):
            return 5

        def __getitem__(self, index):
            self.seen.append(np.array(index))
            return np.asarray(index, dtype=np.float32) * 2, np.asarray(index)

    ds = Recorder()
    batches = list(data.DataLoader(ds, batch_size=2))
    assert [s.tolist() for s in ds.seen] == [[0, 1], [2, 3], [4]]
    np.testing.assert_array_equal(batches[1][0].numpy(), [4.0, 6.0])


# ---------------------------------------------------------------------------- MNIST


def test_mnist_dataset_on_written_idx_files(tiny_mnist):
    image_file, label_file, images, labels = tiny_mnist
    ds = data.MNISTDataset(image_file, label_file)
    assert len(ds) == 7 and ds.transforms is None
    flat = images.reshape(7, 784).astype(np.float32) / 255
    x, y = ds[2]
    assert x.shape == (784,) and x.dtype == np.float32 and y.dtype == np.uint8
    np.testing.assert_array_equal(x, flat[2])
    assert y == labels[2]
    for index in [slice(1, 4), np.array([6, 0, 2])]:
        xs, ys = ds[index]
        assert xs.shape == (len(labels[index]), 784) and xs.dtype == np.float32
        np.testing.assert_array_equal(xs, flat[index])
        np.testing.assert_array_equal(ys, labels[index])
        assert ys.dtype == np.uint8


def test_mnist_transforms_per_image_in_index_order_on_28x28x1(tiny_mnist):
    image_file, label_file, images, _ = tiny_mnist
    seen = []

    def record(img):
        seen.append(img.shape)
        return img

    transforms = [record, data.RandomCrop(2), data.RandomFlipHorizontal(0.5)]
    ds = data.MNISTDataset(image_file, label_file, transforms=transforms)
    np.random.seed(5)
    xs, _ = ds[np.array([4, 1, 6])]
    x_single, _ = ds[3]
    assert seen == [(28, 28, 1)] * 4 and xs.shape == (3, 784) and x_single.shape == (784,)
    np.random.seed(5)
    flat = images.astype(np.float32) / 255
    for got, i in zip(list(xs) + [x_single], [4, 1, 6, 3]):
        img = flat[i].reshape(28, 28, 1)
        shift_x, shift_y = np.random.randint(low=-2, high=3, size=2)
        padded = np.pad(img, [(2, 2), (2, 2), (0, 0)])
        img = padded[2 + shift_x : 2 + shift_x + 28, 2 + shift_y : 2 + shift_y + 28]
        if np.random.rand() < 0.5:
            img = img[:, ::-1, :]
        np.testing.assert_array_equal(got, img.reshape(784))


@pytest.mark.skipif(
    MNIST_DIR is None, reason="MNIST t10k files not found (NEEDLE_DATA_DIR, shipped)"
)
def test_mnist_dataset_on_real_files_and_loader():
    images = read_idx(MNIST_DIR / MNIST_FILES[0])
    labels = read_idx(MNIST_DIR / MNIST_FILES[1])
    ds = data.MNISTDataset(str(MNIST_DIR / MNIST_FILES[0]), str(MNIST_DIR / MNIST_FILES[1]))
    assert len(ds) == len(labels) == 10000
    np.testing.assert_array_equal(ds[9999][0], images[9999].reshape(784) / np.float32(255))
    xb, yb = next(iter(data.DataLoader(ds, batch_size=100)))
    assert xb.shape == (100, 784) and yb.dtype == "uint8"
    np.testing.assert_array_equal(yb.numpy(), labels[:100])
    assert xb.numpy().min() >= 0 and xb.numpy().max() <= 1


# ---------------------------------------------------------------------------- CIFAR-10


def write_cifar(folder, rng):
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=3)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": images, b"labels": labels, b"batch_label": b"x"}, f, protocol=2)
        batches[name] = (images, labels)
    return batches


def test_cifar10_dataset_train_and_test(tmp_path):
    batches = write_cifar(tmp_path, np.random.default_rng(1))
    train = data.CIFAR10Dataset(str(tmp_path), train=True)
    test = data.CIFAR10Dataset(str(tmp_path), train=False, p=0.9)
    assert len(train) == 15 and len(test) == 3
    images = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = [v for i in range(1, 6) for v in batches[f"data_batch_{i}"][1]]
    for i in [0, 7, 14]:
        x, y = train[i]
        assert isinstance(x, np.ndarray) and x.shape == (3, 32, 32)
        np.testing.assert_allclose(x, images[i].reshape(3, 32, 32) / 255.0, rtol=1e-6)
        assert isinstance(y, (int, np.integer)) and y == labels[i]
    x, y = test[2]
    np.testing.assert_allclose(x, batches["test_batch"][0][2].reshape(3, 32, 32) / 255.0, rtol=1e-6)
    assert y == batches["test_batch"][1][2]
    xb, yb = next(iter(data.DataLoader(train, batch_size=4)))
    assert xb.shape == (4, 3, 32, 32) and np.dtype(str(yb.dtype)).kind in "iu"


# ---------------------------------------------------------------------------- PTB


def test_dictionary_ids_in_order_of_first_appearance():
    d = data.Dictionary()
    assert [d.add_word(w) for w in ["b", "a", "b", "c", "a"]] == [0, 1, 0, 2, 1]
    assert d.word2idx == {"b": 0, "a": 1, "c": 2} and d.idx2word == ["b", "a", "c"]
    assert len(d) == 3


def reference_ids(lines, dictionary):
    return [
        dictionary.setdefault(w, len(dictionary))
        for line in lines
        for w in line.split() + ["<eos>"]
    ]


def test_corpus_tokenize_and_max_lines(tmp_path):
    (tmp_path / "train.txt").write_text(" the cat sat\n the dog\n\n a cat ran\n")
    (tmp_path / "test.txt").write_text(" a bird\n the end\n")
    corpus = data.Corpus(str(tmp_path))
    ref = {}
    assert corpus.train == reference_ids(["the cat sat", "the dog", "", "a cat ran"], ref)
    assert corpus.test == reference_ids(["a bird", "the end"], ref)
    assert corpus.dictionary.word2idx == ref and len(corpus.dictionary) == len(ref)
    short = data.Corpus(str(tmp_path), max_lines=2)
    ref = {}
    assert short.train == reference_ids(["the cat sat", "the dog"], ref)
    assert short.test == reference_ids(["a bird", "the end"], ref)
    assert short.tokenize(str(tmp_path / "train.txt"), max_lines=1) == [0, 1, 2, 3]


@pytest.mark.parametrize("batch_size", [3, 4])
def test_batchify_columns_and_tail(batch_size):
    ids = list(range(2, 25))  # 23 ids
    out = data.batchify(ids, batch_size, ndl.cpu(), "float32")
    nbatch = 23 // batch_size
    assert isinstance(out, np.ndarray) and out.shape == (nbatch, batch_size)
    for j in range(batch_size):
        np.testing.assert_array_equal(out[:, j], ids[j * nbatch : (j + 1) * nbatch])


@pytest.mark.parametrize("i,bptt", [(0, 3), (2, 4), (5, 10)])
def test_get_batch_windows(i, bptt):
    batches = data.batchify(list(range(40)), 4, None, None)  # (10, 4)
    device = ndl.cpu()
    X, y = data.get_batch(batches, i, bptt, device=device, dtype="float32")
    L = min(bptt, 10 - 1 - i)
    assert isinstance(X, ndl.Tensor) and X.shape == (L, 4) and y.shape == (L * 4,)
    np.testing.assert_array_equal(X.numpy(), batches[i : i + L])
    np.testing.assert_array_equal(y.numpy(), batches[i + 1 : i + 1 + L].reshape(-1))
    assert X.device == device and y.device == device
    assert isinstance(X.cached_data, np.ndarray if NP_MODE else NDArray)
    X, y = data.get_batch(batches, i, bptt)  # dtype None: Tensor(x)'s rule, as the course
    assert X.dtype == ("int64" if NP_MODE else "float32")
    Xi, _ = data.get_batch(batches, i, bptt, dtype="int64")
    assert Xi.dtype == "int64"
    np.testing.assert_array_equal(Xi.numpy(), batches[i : i + L])


@pytest.mark.skipif(PTB_DIR is None, reason="PTB (ptb-mikolov) not found under NEEDLE_DATA_DIR")
def test_corpus_on_real_ptb(tmp_path):
    shutil.copy(PTB_DIR / "ptb.train.head20.txt", tmp_path / "train.txt")
    shutil.copy(PTB_DIR / "ptb.test.txt", tmp_path / "test.txt")
    corpus = data.Corpus(str(tmp_path), max_lines=200)
    ref = {}
    train_lines = (PTB_DIR / "ptb.train.head20.txt").read_text().splitlines()
    test_lines = (PTB_DIR / "ptb.test.txt").read_text().splitlines()[:200]
    assert corpus.train == reference_ids(train_lines, ref)
    assert corpus.test == reference_ids(test_lines, ref)
    assert len(corpus.dictionary) == len(ref)
    batches = data.batchify(corpus.train, 8, None, None)
    X, y = data.get_batch(batches, 0, 35, device=ndl.cpu())
    assert X.shape == (35, 8) and y.shape == (280,)
