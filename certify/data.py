"""Data sets read from their original file formats, as float tensors ready for certification.

What lives here:

* :class:`Dataset`: images ``x`` (float32, ``(N, C, H, W)``, pixels scaled to ``[lo, hi]``, by default
  ``[0, 1]``) and labels ``y`` (int64, ``(N,)``), with :meth:`Dataset.subset` and :meth:`Dataset.batches`.
* :data:`DATASETS` and :func:`load_dataset`: the named data sets, each read from the files its authors
  distribute:

  - ``digits``: scikit-learn's 8x8 digits (shipped inside scikit-learn, so no files and no network), split
    75/25 exactly as :func:`benchmarks.digits_demo.load_data` splits it;
  - ``mnist``, ``fashion-mnist``: the IDX files (``t10k-images-idx3-ubyte.gz`` ...), gzipped or not, checked
    against an ``MD5SUMS`` file when one lies beside them;
  - ``cifar10``, ``cifar100``: the "python version" pickles (``cifar-10-batches-py/``, ``cifar-100-python/``),
    read with an unpickler that can rebuild numpy arrays and nothing else;
  - ``tinyimagenet``: the ``tiny-imagenet-200/`` folder of 64x64 JPEGs (decoded with Pillow, imported only
    then); its labelled ``val`` images serve as the test split.

  With ``download=True`` missing files are fetched from the data sets' usual addresses, checked against their
  published MD5 sums and moved into place atomically; archives are unpacked without letting a member escape
  the target folder.
* :func:`load_tensors`: a data set saved as ``.pt`` (``torch.save``) or ``.npz`` (``numpy.savez``) with keys
  ``x`` and ``y``, validated (dtypes, shapes, finite values in range, labels non-negative).
* :func:`read_idx`: the IDX reader behind MNIST, usable on its own.
* :func:`default_data_dir`: where files are looked for when no ``data_dir`` is given.
* :class:`DownloadError`: every mirror of a file failed.

Example:
    >>> from certify.data import load_dataset
    >>> test = load_dataset("digits", split="test")
    >>> test
    Dataset(name='digits', n=450, input_shape=(1, 8, 8), num_classes=10, range=[0.0, 1.0])
    >>> xb, yb = next(test.batches(128))
    >>> xb.shape, yb.dtype
    (torch.Size([128, 1, 8, 8]), torch.int64)
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import math
import os
import pickle
import re
import shutil
import struct
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "Dataset",
    "DownloadError",
    "default_data_dir",
    "is_tensor_file",
    "load_dataset",
    "load_tensors",
    "read_idx",
]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "tinyimagenet")
SPLITS = ("train", "test")

_TIMEOUT_S = 60
_TENSOR_SUFFIXES = (".pt", ".pth", ".npz")


# ---------------------------------------------------------------------------- the container
@dataclass(frozen=True, repr=False, eq=False)
class Dataset:
    """Images and labels of one split, held in memory.

    ``x`` is float32 of shape ``(N, C, H, W)`` with every pixel in ``[lo, hi]``; ``y`` is int64 of shape
    ``(N,)`` with labels in ``[0, num_classes)``; ``classes`` names the labels when the files do.

    Example:
        >>> import torch
        >>> from certify.data import Dataset
        >>> ds = Dataset("toy", torch.rand(10, 1, 2, 2), torch.arange(10) % 3, num_classes=3)
        >>> len(ds), ds.input_shape
        (10, (1, 2, 2))
        >>> ds.subset(4).y.tolist()
        [0, 1, 2, 0]
        >>> len(ds.subset(4, seed=0)), len(ds.subset(None)), len(ds.subset(99))
        (4, 10, 10)
        >>> [len(xb) for xb, _ in ds.batches(4)]
        [4, 4, 2]
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    lo: float = 0.0
    hi: float = 1.0
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # Fail at construction, not deep inside a certification run, when a loader hands over the wrong thing.
        if self.x.dim() != 4 or self.x.dtype != torch.float32:
            raise ValueError(f"{self.name}: x must be float32 (N, C, H, W), got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dim() != 1 or self.y.dtype != torch.int64 or len(self.y) != len(self.x):
            raise ValueError(f"{self.name}: y must be int64 (N,) with N = {len(self.x)}, got {self.y.dtype} "
                             f"{tuple(self.y.shape)}")
        if not self.lo < self.hi:
            raise ValueError(f"{self.name}: need lo < hi, got [{self.lo}, {self.hi}]")
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.classes)} class names for {self.num_classes} classes")

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        # The dataclass default would print every pixel.
        return (f"Dataset(name={self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
                f"num_classes={self.num_classes}, range=[{self.lo}, {self.hi}])")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, n: int | None, seed: int | None = None) -> Dataset:
        """At most ``n`` samples: the first ``n``, or ``n`` drawn without replacement with ``seed`` (kept in
        their original order). ``n=None`` or ``n >= len(self)`` keeps everything."""
        if n is None:
            return self
        if n < 0:
            raise ValueError(f"{self.name}: subset size must be >= 0, got {n}")
        n = min(n, len(self))
        if seed is None:
            index: slice | torch.Tensor = slice(0, n)
        else:
            generator = torch.Generator().manual_seed(seed)
            index = torch.randperm(len(self), generator=generator)[:n].sort().values
        return dataclasses.replace(self, x=self.x[index], y=self.y[index])

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x, y)`` slices of ``batch_size`` samples in order (the last one may be shorter); views, no copies."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self.x[start:start + batch_size], self.y[start:start + batch_size]


class DownloadError(OSError):
    """No mirror of a file could be fetched (no network, an HTTP error, or a checksum mismatch)."""


# ---------------------------------------------------------------------------- entry point
def default_data_dir() -> Path:
    """``$HYPERCERT_DATA`` when set, else ``./data``: where :func:`load_dataset` looks without a ``data_dir``."""
    return Path(os.environ.get("HYPERCERT_DATA", "data")).expanduser()


def is_tensor_file(name: str | Path) -> bool:
    """Whether ``name`` names a ``.pt``/``.pth``/``.npz`` data file (one set of samples, no splits)
    rather than a data set of :data:`DATASETS`."""
    return isinstance(name, Path) or str(name).lower().endswith(_TENSOR_SUFFIXES)


def load_dataset(name: str | Path, data_dir: str | Path | None = None, split: str = "test",
                 download: bool = False) -> Dataset:
    """Load ``split`` (``"train"`` or ``"test"``) of the data set ``name``, one of :data:`DATASETS`.

    ``name`` may also be the path of a ``.pt``/``.npz`` file, read by :func:`load_tensors` (``split`` and
    ``data_dir`` do not apply then). Files are looked for under ``data_dir`` (default
    :func:`default_data_dir`) in the folders each loader names in its error message; with ``download=True``
    missing ones are fetched into a folder named after the data set (``data_dir/mnist``,
    ``data_dir/fashion_mnist``, ``data_dir/cifar10``, ``data_dir/cifar100``, ``data_dir/tinyimagenet``).
    ``tinyimagenet`` also takes ``split="val"``, the same as ``"test"``. ``digits`` needs no files.

    Example:
        >>> from certify.data import load_dataset
        >>> train = load_dataset("digits", split="train")
        >>> len(train), train.num_classes, float(train.x.max())
        (1347, 10, 1.0)
        >>> load_dataset("svhn")
        Traceback (most recent call last):
        ...
        ValueError: unknown dataset 'svhn'; available: digits, mnist, fashion-mnist, cifar10, cifar100, \
tinyimagenet, or the path of a .pt/.npz file
    """
    if is_tensor_file(name):
        return load_tensors(name)
    key = _canonical_name(name)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    return _LOADERS[key](root, _canonical_split(key, split), download)


def _canonical_name(name: str) -> str:
    # "Fashion_MNIST", "fashionmnist" and "CIFAR-10" are what people type for the same data.
    squashed = re.sub(r"[-_ ]", "", name.lower())
    for known in DATASETS:
        if squashed == known.replace("-", ""):
            return known
    raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}, or the path of a .pt/.npz file")


def _canonical_split(key: str, split: str) -> str:
    allowed = SPLITS + (("val",) if key == "tinyimagenet" else ())
    if split not in allowed:
        raise ValueError(f"unknown split {split!r} for {key}; use one of: {', '.join(allowed)}")
    return "test" if split == "val" else split


def _images_dataset(name: str, images: np.ndarray, labels: np.ndarray, num_classes: int,
                    classes: Sequence[str] | None, label_file: Path) -> Dataset:
    """uint8 ``(N, C, H, W)`` pixels and integer labels -> :class:`Dataset` in [0, 1], labels range-checked."""
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise ValueError(f"{label_file}: label {bad} outside [0, {num_classes})")
    # Divide in float32, as torchvision's ToTensor does, so pixel values agree bit for bit with it.
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return Dataset(name, x, torch.from_numpy(labels), num_classes,
                   classes=tuple(classes) if classes is not None else None)


# ---------------------------------------------------------------------------- digits
def _load_digits(root: Path, split: str, download: bool) -> Dataset:
    # Imported here: scikit-learn takes a second to import and only this loader needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    # Same arrays, same call as benchmarks.digits_demo.load_data(seed=0), so both see the same test points.
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    x_split, y_split = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    return Dataset("digits", torch.from_numpy(x_split.reshape(-1, 1, 8, 8)), torch.from_numpy(y_split), 10,
                   classes=tuple(str(d) for d in range(10)))


# ---------------------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (gzipped or not), in native byte order.

    The header is checked: magic number ``00 00 <type> <ndim>``, the dimensions, and that the data is exactly
    as long as they say (a truncated download is caught here rather than read as zeros).

    Example:
        >>> import gzip, tempfile
        >>> from pathlib import Path
        >>> from certify.data import read_idx
        >>> path = Path(tempfile.mkdtemp()) / "labels-idx1-ubyte.gz"
        >>> _ = path.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])))
        >>> read_idx(path)
        array([7, 2, 1], dtype=uint8)
    """
    path = Path(path)
    raw = _read_maybe_gzipped(path)
    if not raw:
        raise ValueError(f"{path}: empty file")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number 0x{raw[:4].hex()})")
    ndim, dtype = raw[3], _IDX_DTYPES[raw[2]]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected, found = math.prod(dims) * dtype.itemsize, len(raw) - header
    if found != expected:
        problem = "truncated" if found < expected else "trailing bytes"
        raise ValueError(f"{path}: IDX shape {dims} needs {expected} data bytes, file has {found} ({problem})")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _read_maybe_gzipped(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":  # the gzip magic; decide by content since people gunzip and keep names
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt gzip data ({err})") from None


_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# Where people keep them: flat, one folder per data set, or torchvision's <Name>/raw layout.
_IDX_FOLDERS = {"mnist": ("", "mnist", "MNIST/raw"),
                "fashion-mnist": ("", "fashion_mnist", "fashion-mnist", "FashionMNIST/raw")}
_IDX_DOWNLOAD_FOLDER = {"mnist": "mnist", "fashion-mnist": "fashion_mnist"}
_IDX_MIRRORS = {"mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
                "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)}
# The published checksums of the .gz files (the same ones torchvision checks).
_IDX_MD5 = {
    "mnist": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
              "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
              "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
              "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    "fashion-mnist": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                      "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                      "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                      "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
}
_IDX_CLASSES = {"mnist": tuple(str(d) for d in range(10)),
                "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                  "Sneaker", "Bag", "Ankle boot")}


def _load_idx_dataset(key: str, root: Path, split: str, download: bool) -> Dataset:
    image_file, label_file = _find_idx_pair(key, root, split, download)
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{image_file}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{label_file}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{image_file}: {len(images)} images but {label_file.name} has {len(labels)} labels")
    return _images_dataset(key, images[:, None], labels, 10, _IDX_CLASSES[key], label_file)


def _find_idx_pair(key: str, root: Path, split: str, download: bool) -> tuple[Path, Path]:
    stems = _IDX_FILES[split]
    folders = [root / sub if sub else root for sub in _IDX_FOLDERS[key]]
    for folder in folders:
        found = [_idx_file(folder, stem) for stem in stems]
        if found[0] is not None and found[1] is not None:
            for path in found:
                _verify_idx_file(key, path)
            return found[0], found[1]
    if not download:
        looked = ", ".join(str(f) for f in folders)
        raise FileNotFoundError(f"{key} {split} files not found: looked for {stems[0]}[.gz] and {stems[1]}[.gz] in "
                                f"{looked}; pass download=True (--download) to fetch them")
    target = root / _IDX_DOWNLOAD_FOLDER[key]
    paths = []
    for stem in stems:
        dest = target / f"{stem}.gz"
        if not dest.is_file():
            _download([m + dest.name for m in _IDX_MIRRORS[key]], dest, _IDX_MD5[key][dest.name])
        paths.append(dest)
    return paths[0], paths[1]


def _idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _verify_idx_file(key: str, path: Path) -> None:
    """Check ``path`` against an ``MD5SUMS`` beside it, and that it is not the other data set's file: MNIST and
    Fashion-MNIST use the same file names, so a flat ``data_dir`` could silently serve the wrong one."""
    expected = _md5sums_entry(path)
    others = {md5: (name, fname) for name, files in _IDX_MD5.items() if name != key for fname, md5 in files.items()}
    if expected is None and path.suffix != ".gz":
        return  # nothing to compare an uncompressed file with; skip hashing it
    digest = _md5(path)
    if expected is not None and digest != expected:
        raise ValueError(f"{path}: MD5 {digest} does not match {expected} listed in MD5SUMS (corrupt or replaced file)")
    if digest in others:
        name, fname = others[digest]
        raise ValueError(f"{path}: this is {name}'s {fname}, not {key}'s; keep each data set in its own folder")


def _md5sums_entry(path: Path) -> str | None:
    """The checksum an ``MD5SUMS`` file in ``path``'s folder or the one above lists for ``path``, if any."""
    target = path.resolve()
    for folder in (path.parent, path.parent.parent):
        sums = folder / "MD5SUMS"
        if not sums.is_file():
            continue
        for line in sums.read_text().splitlines():
            match = re.fullmatch(r"([0-9a-fA-F]{32}) [ *](.+)", line.strip())
            if match and (folder / match.group(2)).resolve() == target:
                return match.group(1).lower()
    return None


# ---------------------------------------------------------------------------- CIFAR-10 / CIFAR-100
_CIFAR = {
    "cifar10": {"folder": "cifar-10-batches-py", "archive": "cifar-10-python.tar.gz",
                "md5": "c58f30108f718f92721af3b95e74349a", "label_key": b"labels",
                "train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",),
                "meta": "batches.meta", "names_key": b"label_names", "num_classes": 10},
    "cifar100": {"folder": "cifar-100-python", "archive": "cifar-100-python.tar.gz",
                 "md5": "eb9058c3a382ffc7106e4002c42a8d85", "label_key": b"fine_labels",
                 "train": ("train",), "test": ("test",),
                 "meta": "meta", "names_key": b"fine_label_names", "num_classes": 100},
}
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"

# What the CIFAR pickles (and numpy arrays pickled by any numpy since) need to rebuild their contents:
# arrays, dtypes, and the latin-1 bytes shim protocol-2 pickles written by Python 3 use. No other callable.
_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a callable outside :data:`_PICKLE_GLOBALS`."""


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and plain containers and refuses every other global, so a
    crafted file cannot make loading it call ``os.system`` or anything else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise _RefusedGlobal(f"refusing to load global {module}.{name} (only numpy arrays may be rebuilt)")


def _load_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            # encoding="bytes" is what the format needs: the files were written by Python 2 with str keys.
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except _RefusedGlobal as err:
        raise ValueError(f"{path}: {err}") from None
    except Exception as err:  # a damaged pickle can raise almost anything; report it as a bad file
        raise ValueError(f"{path}: not a readable CIFAR python pickle ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_cifar_pickle(path)
    if b"data" not in batch or label_key not in batch:
        raise ValueError(f"{path}: missing key b'data' or {label_key!r} (keys: {sorted(batch, key=repr)})")
    data, labels = batch[b"data"], np.asarray(batch[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: b'data' must be a uint8 array (N, 3072), found {found}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: {label_key!r} must be a list of integers, found {labels.dtype} {labels.shape}")
    if len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def _load_cifar(key: str, root: Path, split: str, download: bool) -> Dataset:
    spec = _CIFAR[key]
    folders = [root / spec["folder"], root / key / spec["folder"]]
    folder = next((f for f in folders if all((f / name).is_file() for name in spec[split])), None)
    archive = _local_archive(root, key, spec["archive"], spec["md5"])
    if folder is None and not download and archive is None:
        looked = ", ".join(str(f) for f in folders)
        raise FileNotFoundError(f"{key} {split} files ({', '.join(spec[split])}) not found in {looked}, nor "
                                f"{spec['archive']}; pass download=True (--download) to fetch them")
    if folder is None:
        folder = _download_and_unpack([_CIFAR_URL + spec["archive"]], archive or root / key / spec["archive"],
                                      spec["md5"], spec["folder"], verified=archive is not None)
    parts = [_cifar_batch(folder / name, spec["label_key"]) for name in spec[split]]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    # Rows are the red plane, then green, then blue, each 32x32 row-major: exactly (3, 32, 32).
    return _images_dataset(key, data.reshape(-1, 3, 32, 32), labels, spec["num_classes"],
                           _cifar_class_names(folder / spec["meta"], spec), folder / spec[split][0])


def _cifar_class_names(meta: Path, spec: Mapping[str, Any]) -> tuple[str, ...] | None:
    if not meta.is_file():
        return None  # names are a nicety; the labels do not depend on them
    names = _load_cifar_pickle(meta).get(spec["names_key"])
    if not isinstance(names, list) or len(names) != spec["num_classes"]:
        raise ValueError(f"{meta}: expected {spec['num_classes']} names under {spec['names_key']!r}")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


# ---------------------------------------------------------------------------- TinyImageNet-200
_TINY = {"folder": "tiny-imagenet-200", "archive": "tiny-imagenet-200.zip",
         "url": "http://cs231n.stanford.edu/tiny-imagenet-200.zip", "md5": "90528d7ca1a48142e341f4ef8d21d0de"}


def _load_tinyimagenet(root: Path, split: str, download: bool) -> Dataset:
    folders = [root / _TINY["folder"], root / "tinyimagenet" / _TINY["folder"]]
    folder = next((f for f in folders if (f / "wnids.txt").is_file()), None)
    archive = _local_archive(root, "tinyimagenet", _TINY["archive"], _TINY["md5"])
    if folder is None and not download and archive is None:
        looked = ", ".join(str(f) for f in folders)
        raise FileNotFoundError(f"tinyimagenet not found: no wnids.txt in {looked}, nor {_TINY['archive']}; "
                                f"pass download=True (--download) to fetch it (about 250 MB)")
    if folder is None:
        folder = _download_and_unpack([_TINY["url"]], archive or root / "tinyimagenet" / _TINY["archive"],
                                      _TINY["md5"], _TINY["folder"], verified=archive is not None)
    wnids = _read_wnids(folder / "wnids.txt")
    files, labels = (_tiny_train_files if split == "train" else _tiny_val_files)(folder, wnids)
    images = _read_images(files)
    return _images_dataset("tinyimagenet", images.transpose(0, 3, 1, 2), np.asarray(labels, dtype=np.int64),
                           len(wnids), wnids, folder / "wnids.txt")


def _read_wnids(path: Path) -> tuple[str, ...]:
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise ValueError(f"{path}: expected one distinct WordNet id per line")
    # Sorted, as torchvision's ImageFolder orders the train folders, so label i means the same class as
    # in the certified-training code that reads this data set that way.
    return tuple(sorted(wnids))


def _tiny_train_files(folder: Path, wnids: Sequence[str]) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        images = sorted(p for p in (folder / "train" / wnid / "images").glob("*") if _is_jpeg(p))
        if not images:
            raise FileNotFoundError(f"{folder / 'train' / wnid / 'images'}: no JPEG images for class {wnid}")
        files += images
        labels += [label] * len(images)
    return files, labels


def _tiny_val_files(folder: Path, wnids: Sequence[str]) -> tuple[list[Path], list[int]]:
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise FileNotFoundError(f"{annotations}: no such file (it labels the val images used as the test split)")
    index = {wnid: i for i, wnid in enumerate(wnids)}
    files: list[Path] = []
    labels: list[int] = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        fields = line.split("\t")
        if not line.strip():
            continue
        # The file must be a bare name: the annotations may not steer reads outside val/images.
        bare = len(fields) >= 2 and Path(fields[0]).name == fields[0] and fields[0] not in ("", "..")
        if not bare or fields[1] not in index:
            raise ValueError(f"{annotations}: line {number}: expected '<file name>\\t<wnid listed in wnids.txt>', "
                             f"got {line[:80]!r}")
        files.append(folder / "val" / "images" / fields[0])
        labels.append(index[fields[1]])
    return files, labels


def _is_jpeg(path: Path) -> bool:
    return path.suffix.lower() in (".jpeg", ".jpg")


def _read_images(files: Sequence[Path]) -> np.ndarray:
    """uint8 ``(N, H, W, 3)``; every image must have the size of the first."""
    if not files:
        raise ValueError("tinyimagenet: no images listed for this split")
    first = _read_image(files[0])
    out = np.empty((len(files), *first.shape), dtype=np.uint8)  # one allocation, not a list of 100k arrays
    out[0] = first
    for i, path in enumerate(files[1:], start=1):
        image = _read_image(path)
        if image.shape != first.shape:
            raise ValueError(f"{path}: image is {image.shape[:2]}, the others are {first.shape[:2]}")
        out[i] = image
    return out


def _read_image(path: Path) -> np.ndarray:
    """One image as uint8 ``(H, W, 3)``: grey JPEGs (TinyImageNet has some) are expanded to RGB."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:
        raise ImportError("tinyimagenet's JPEGs are decoded with Pillow: pip install pillow") from err
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None


# ---------------------------------------------------------------------------- .pt / .npz
def load_tensors(path: str | Path) -> Dataset:
    """A data set saved as tensors: ``.pt``/``.pth`` or ``.npz``.

    A ``.pt`` file holds a dict with keys ``"x"`` and ``"y"`` or an ``(x, y)`` pair, and is read with
    ``torch.load(weights_only=True)`` (plain tensors and containers only, no code). A ``.npz`` holds arrays
    ``x`` and ``y`` (read without pickle). Optional keys: ``num_classes`` (default: ``len(classes)`` when
    ``classes`` is stored, else ``y.max() + 1``), ``lo`` and ``hi`` (default 0 and 1), ``classes``, ``name``
    (default: the file's stem).

    ``x`` must be floating point, ``(N, C, H, W)`` or ``(N, H, W)`` (a channel axis is added), finite and
    within ``[lo, hi]``; ``y`` must be integers ``(N,)`` in ``[0, num_classes)``.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from certify.data import load_tensors
        >>> path = Path(tempfile.mkdtemp()) / "toy.pt"
        >>> torch.save({"x": torch.rand(5, 3, 4, 4), "y": torch.tensor([0, 2, 1, 2, 0])}, path)
        >>> load_tensors(path)
        Dataset(name='toy', n=5, input_shape=(3, 4, 4), num_classes=3, range=[0.0, 1.0])
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        fields = _read_pt(path)
    elif suffix == ".npz":
        fields = _read_npz(path)
    else:
        raise ValueError(f"{path}: expected a .pt, .pth or .npz file")
    return _dataset_from_fields(path, fields)


def _read_pt(path: Path) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds here; all mean "not a loadable tensor file"
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: cannot be read by torch.load(weights_only=True) ({first_line})") from None
    if isinstance(obj, dict):
        if "x" not in obj or "y" not in obj:
            raise ValueError(f"{path}: the dict needs keys 'x' and 'y', has {sorted(map(str, obj))}")
        return dict(obj)
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return {"x": obj[0], "y": obj[1]}
    raise ValueError(f"{path}: expected a dict with 'x' and 'y' or an (x, y) pair, found {type(obj).__name__}")


def _read_npz(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            fields = {key: npz[key] for key in npz.files}
    except Exception as err:  # not a zip, a pickled object array, a damaged member...
        raise ValueError(f"{path}: cannot be read as .npz without pickle ({err})") from None
    if "x" not in fields or "y" not in fields:
        raise ValueError(f"{path}: needs arrays 'x' and 'y', has {sorted(fields)}")
    return fields


def _as_tensor(path: Path, key: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(np.ascontiguousarray(value))
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: {key!r} is not a numeric array ({err})") from None


def _scalar(path: Path, key: str, value: Any, kind: type) -> Any:
    try:
        item = value.item() if hasattr(value, "item") else value
        result = kind(item)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {key!r} must be a single {kind.__name__}, got {value!r} ({err})") from None
    if result != item:
        raise ValueError(f"{path}: {key!r} must be a single {kind.__name__}, got {item!r}")
    return result


def _dataset_from_fields(path: Path, fields: Mapping[str, Any]) -> Dataset:
    x, y = _as_tensor(path, "x", fields["x"]), _as_tensor(path, "y", fields["y"])
    if not x.is_floating_point():
        raise ValueError(f"{path}: x must be floating point (pixels already scaled), got {x.dtype}")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"{path}: x must have shape (N, C, H, W) or (N, H, W), got {tuple(x.shape)}")
    x = x.to(torch.float32).contiguous()
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.dim() != 1:
        raise ValueError(f"{path}: y must be a 1-D integer array, got {y.dtype} {tuple(y.shape)}")
    y = y.to(torch.int64).contiguous()
    if len(x) != len(y):
        raise ValueError(f"{path}: x has {len(x)} samples but y has {len(y)} labels")
    if len(y) == 0:
        raise ValueError(f"{path}: no samples")
    if not torch.isfinite(x).all():
        raise ValueError(f"{path}: x contains NaN or infinite values")
    if int(y.min()) < 0:
        raise ValueError(f"{path}: negative label {int(y.min())} in y")
    lo = _scalar(path, "lo", fields.get("lo", 0.0), float)
    hi = _scalar(path, "hi", fields.get("hi", 1.0), float)
    x_lo, x_hi = float(x.min()), float(x.max())
    if x_lo < lo or x_hi > hi:
        raise ValueError(f"{path}: x values span [{x_lo:g}, {x_hi:g}], outside [{lo:g}, {hi:g}]; "
                         f"store 'lo'/'hi' in the file to declare another pixel range")
    classes = _class_names(path, fields.get("classes"))
    num_classes = _num_classes(path, fields, classes, int(y.max()))
    name = str(fields["name"]) if "name" in fields else path.stem
    return Dataset(name, x, y, num_classes, lo=lo, hi=hi, classes=classes)


def _class_names(path: Path, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = value.tolist() if isinstance(value, np.ndarray) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: 'classes' must be a list of strings")
    return tuple(names)


def _num_classes(path: Path, fields: Mapping[str, Any], classes: tuple[str, ...] | None, y_max: int) -> int:
    if "num_classes" in fields:
        num_classes = _scalar(path, "num_classes", fields["num_classes"], int)
    else:
        num_classes = len(classes) if classes is not None else y_max + 1
    if y_max >= num_classes:
        raise ValueError(f"{path}: label {y_max} in y but only {num_classes} classes")
    if classes is not None and len(classes) != num_classes:
        raise ValueError(f"{path}: {len(classes)} class names for {num_classes} classes")
    return num_classes


# ---------------------------------------------------------------------------- downloads
def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # an integrity check against published sums, not security
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(urls: Sequence[str], dest: Path, md5: str) -> Path:
    """Fetch ``dest`` from the first of ``urls`` that serves bytes with checksum ``md5``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        print(f"downloading {url} -> {dest}", file=sys.stderr)
        try:
            _fetch(url, dest, md5)
            return dest
        except (OSError, ValueError) as err:  # urllib's errors are OSErrors; a bad checksum is a ValueError
            failures.append(f"{url}: {err}")
    raise DownloadError(f"could not download {dest.name} ({'; '.join(failures)})")


def _fetch(url: str, dest: Path, md5: str) -> None:
    # A temp file in the same folder, renamed only once complete and verified: an interrupted download never
    # leaves a file under the final name that a later run would trust.
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise ValueError(f"MD5 {digest.hexdigest()} does not match the published {md5}")
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _local_archive(root: Path, key: str, name: str, md5: str) -> Path | None:
    """A distribution archive already on disk with the published MD5: ``root/name`` (where torchvision
    leaves it) or ``root/key/name`` (where ``download=True`` puts it); unpacked without any download.
    A damaged copy (an interrupted download) is passed over, never unpacked."""
    return next((a for a in (root / name, root / key / name) if a.is_file() and _md5(a) == md5), None)


def _download_and_unpack(urls: Sequence[str], archive: Path, md5: str, folder_name: str,
                         verified: bool = False) -> Path:
    """Make sure ``archive`` (verified) is there, then unpack its top folder ``folder_name`` beside it.
    ``verified``: the caller has just checked its MD5 (a TinyImageNet archive is 250 MB to hash again)."""
    if not archive.is_file():
        _download(urls, archive, md5)
    elif not verified and (digest := _md5(archive)) != md5:
        raise ValueError(f"{archive}: MD5 {digest} does not match the published {md5}; delete it to download again")
    target = archive.parent / folder_name
    if target.exists():
        raise FileExistsError(f"{target} exists but lacks the expected files; remove it to unpack {archive.name} "
                              f"again")
    _unpack(archive, target)
    return target


def _unpack(archive: Path, target: Path) -> None:
    """Unpack into a scratch folder, then move ``target``'s folder into place in one rename."""
    scratch = Path(tempfile.mkdtemp(dir=archive.parent, prefix=".unpack-"))
    try:
        if zipfile.is_zipfile(archive):
            _unpack_zip(archive, scratch)
        else:
            _unpack_tar(archive, scratch)
        if not (scratch / target.name).is_dir():
            raise ValueError(f"{archive}: has no top folder {target.name}/")
        os.replace(scratch / target.name, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _member_path(archive: Path, root: Path, name: str) -> Path:
    """Where member ``name`` goes under ``root``; refuses absolute names and ``..`` (path traversal)."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or "\\" in name or not pure.parts:
        raise ValueError(f"{archive}: refusing member {name!r} (it would be written outside the target folder)")
    return root.joinpath(*pure.parts)


def _unpack_tar(archive: Path, root: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            path = _member_path(archive, root, member.name)
            if member.isdir():
                path.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                path.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(path, "wb") as dst:  # type: ignore[union-attr]
                    shutil.copyfileobj(src, dst)
            else:  # a link could point a later member's write anywhere; the data sets have none
                raise ValueError(f"{archive}: refusing member {member.name!r} (links and devices are not unpacked)")


def _unpack_zip(archive: Path, root: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = _member_path(archive, root, info.filename)
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            # Written as plain files whatever the entry's mode bits say, so a "symlink" entry stays inert text.
            with zf.open(info) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)


_LOADERS: dict[str, Callable[[Path, str, bool], Dataset]] = {
    "digits": _load_digits,
    "mnist": lambda root, split, download: _load_idx_dataset("mnist", root, split, download),
    "fashion-mnist": lambda root, split, download: _load_idx_dataset("fashion-mnist", root, split, download),
    "cifar10": lambda root, split, download: _load_cifar("cifar10", root, split, download),
    "cifar100": lambda root, split, download: _load_cifar("cifar100", root, split, download),
    "tinyimagenet": _load_tinyimagenet,
}
