"""Penn Treebank word-level language modelling data, as in the course's hw4."""

import os
from typing import Optional

import numpy as np

from ...autograd import Tensor
from ..data_basic import missing_file_error

__all__ = ["Dictionary", "Corpus", "batchify", "get_batch"]

EOS = "<eos>"

HOW_TO_GET = (
    "Get the Penn Treebank text files (e.g. ptb.train.txt, ptb.valid.txt, ptb.test.txt from "
    "the data/ folder of Mikolov's simple-examples.tgz), one sentence a line, and pass their "
    "folder with --data-dir."
)


class Dictionary:
    """A two-way map between words and consecutive integer ids."""

    def __init__(self):
        self.word2idx = {}
        self.idx2word = []

    def add_word(self, word: str) -> int:
        """The id of `word`, adding it with the next free id if it is new."""
        idx = self.word2idx.get(word)
        if idx is None:
            idx = self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return idx

    def __len__(self) -> int:
        return len(self.idx2word)


def _find(base_dir: str, split: str, required: bool = True) -> Optional[str]:
    """base_dir/<split>.txt, or the Mikolov name base_dir/ptb.<split>.txt."""
    candidates = [os.path.join(base_dir, name) for name in (f"{split}.txt", f"ptb.{split}.txt")]
    for path in candidates:
        if os.path.isfile(path):
            return path
    if required:
        raise missing_file_error(" or ".join(candidates), f"PTB {split} file", HOW_TO_GET)
    return None


class Corpus:
    """Tokenised PTB splits: `train` and `test` (and `valid` when its file exists, else None).

    ``Corpus(base_dir, max_lines=None)`` reads `train.txt` then `test.txt` (the course's names)
    or `ptb.train.txt` / `ptb.test.txt` (Mikolov's), then the valid split if present, and keeps
    the first `max_lines` lines of each. Every split is a list of word ids over one shared
    `dictionary`.
    """

    def __init__(self, base_dir: str, max_lines: Optional[int] = None):
        base_dir = os.fspath(base_dir)
        self.dictionary = Dictionary()
        self.train = self.tokenize(_find(base_dir, "train"), max_lines)
        self.test = self.tokenize(_find(base_dir, "test"), max_lines)
        # After train and test, so their ids are the course's whether or not valid exists.
        valid = _find(base_dir, "valid", required=False)
        self.valid = self.tokenize(valid, max_lines) if valid else None

    def tokenize(self, path: str, max_lines: Optional[int] = None) -> list[int]:
        """The word ids of the file's first `max_lines` lines, each line ending in `<eos>`.

        Words are split on whitespace and `<eos>` is appended to every line, as the course
        does (a text that already ends its lines with `<eos>` gets two).
        """
        if not os.path.isfile(path):
            raise missing_file_error(path, "PTB text file", HOW_TO_GET)
        ids = []
        with open(path, "rb") as f:
            for n, line in enumerate(f):
                if max_lines is not None and n >= max_lines:
                    break
                try:
                    words = line.decode("utf-8").split()
                except UnicodeDecodeError as e:
                    raise ValueError(f"{path}, line {n + 1}: not UTF-8 text ({e})") from e
                words.append(EOS)
                ids.extend(self.dictionary.add_word(word) for word in words)
        return ids


def batchify(data, batch_size: int, device=None, dtype=None) -> np.ndarray:
    """Cut a stream of ids into `batch_size` contiguous columns: (nbatch, batch_size).

    Column j holds ids [j*nbatch, (j+1)*nbatch); the tail that does not fill a row is dropped.
    Returns int64 ids as a NumPy array (as the course); `device` and `dtype` are accepted for
    the course's signature and apply later, in `get_batch`.
    """
    nbatch = len(data) // batch_size
    if nbatch == 0:
        raise ValueError(f"{len(data)} ids are too few for batch_size {batch_size}")
    return np.asarray(data[: nbatch * batch_size], dtype=np.int64).reshape(batch_size, nbatch).T


def get_batch(
    batches: np.ndarray, i: int, bptt: int, device=None, dtype=None
) -> tuple[Tensor, Tensor]:
    """Rows i..i+L of `batchify`'s output and the ids one step later, L = min(bptt, n-1-i).

    Returns data (L, batch_size) and target (L*batch_size,), both Tensors with
    requires_grad=False, on `device`: target[t*batch_size + j] is the word after data[t, j].
    Their dtype is `dtype`; None follows ``Tensor(x)`` as the course does (float32 in the
    NDArray mode, the ids' int64 in the numpy mode). Pass ``dtype="int64"`` for integer ids,
    which `nn.Embedding` and `nn.SoftmaxLoss` take exactly (needle's own training does).
    """
    seq_len = min(bptt, len(batches) - 1 - i)
    if seq_len < 1:
        raise IndexError(f"get_batch: start {i} leaves no targets in {len(batches)} rows")
    data = batches[i : i + seq_len]
    target = batches[i + 1 : i + 1 + seq_len].reshape(-1)
    return (
        Tensor(data, device=device, dtype=dtype, requires_grad=False),
        Tensor(target, device=device, dtype=dtype, requires_grad=False),
    )
