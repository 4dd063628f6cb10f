"""certify.data: each loader on tiny files written in the real format, the real MNIST when present, downloads
through a local opener (never the network), and one test per kind of bad input, checking its message."""

from __future__ import annotations

import email.message
import gzip
import io
import os
import pickle
import re
import tarfile
import urllib.error
import urllib.request
import urllib.response
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import (
    CIFAR10_CLASSES,
    class_colour,
    idx_bytes,
    py2_cifar_batch_bytes,
    save_jpeg,
    save_npy_as,
    tar_gz_bytes,
    write_cifar10,
    write_cifar100,
    write_idx,
    write_mnist,
    write_tinyimagenet,
    zip_bytes,
)

from certify import data
from certify.data import DATASETS, Dataset, DownloadError, load_dataset, load_tensors, read_idx

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared_mnist = pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason=f"no real MNIST under {SHARED}")


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------------------- a network that is never reached
class LocalServer(urllib.request.BaseHandler):
    """Answers http(s) requests from a dict of url -> bytes, 404 otherwise; records what was asked."""

    def __init__(self, files: dict[str, bytes] | None = None):
        self.files = dict(files or {})
        self.requested: list[str] = []

    def _serve(self, request: urllib.request.Request):
        url = request.full_url
        self.requested.append(url)
        if url not in self.files:
            raise urllib.error.HTTPError(url, 404, "Not Found", email.message.Message(), None)
        return urllib.response.addinfourl(io.BytesIO(self.files[url]), email.message.Message(), url, 200)

    http_open = https_open = _serve


@pytest.fixture(autouse=True)
def server(monkeypatch) -> LocalServer:
    """Every test runs with urlopen answered locally: an opener with no real HTTP handler cannot reach out."""
    handler = LocalServer()
    opener = urllib.request.OpenerDirector()
    opener.add_handler(handler)
    monkeypatch.setattr(urllib.request, "_opener", opener)
    return handler


# ---------------------------------------------------------------------------- Dataset
def toy(n: int = 10) -> Dataset:
    return Dataset("toy", torch.rand(n, 1, 2, 3), torch.arange(n) % 4, num_classes=4)


def test_dataset_len_shape_and_repr():
    ds = toy()
    assert len(ds) == 10 and ds.input_shape == (1, 2, 3)
    assert repr(ds) == "Dataset(name='toy', n=10, input_shape=(1, 2, 3), num_classes=4, range=[0.0, 1.0])"


def test_subset_first_n_random_n_and_clamping():
    ds = toy(50)
    assert torch.equal(ds.subset(5).y, ds.y[:5]) and torch.equal(ds.subset(5).x, ds.x[:5])
    a, b, c = ds.subset(10, seed=1), ds.subset(10, seed=1), ds.subset(10, seed=2)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    rows = [int(torch.nonzero((ds.x == xi).flatten(1).all(1))[0]) for xi in a.x]
    assert rows == sorted(rows) and len(set(rows)) == 10  # distinct samples, kept in their original order
    assert ds.subset(None) is ds and len(ds.subset(500)) == 50 and len(ds.subset(0)) == 0
    with pytest.raises(ValueError, match="subset size must be >= 0"):
        ds.subset(-1)


def test_batches_cover_everything_in_order():
    ds = toy(10)
    parts = list(ds.batches(4))
    assert [len(x) for x, _ in parts] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in parts]), ds.y)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(ds.batches(0))


@pytest.mark.parametrize("x, y, message", [
    (torch.rand(3, 4), torch.zeros(3, dtype=torch.int64), "x must be float32 \\(N, C, H, W\\)"),
    (torch.rand(3, 1, 2, 2).double(), torch.zeros(3, dtype=torch.int64), "x must be float32"),
    (torch.rand(3, 1, 2, 2), torch.zeros(3), "y must be int64"),
    (torch.rand(3, 1, 2, 2), torch.zeros(2, dtype=torch.int64), "y must be int64 \\(N,\\) with N = 3"),
])
def test_dataset_rejects_wrong_tensors(x, y, message):
    with pytest.raises(ValueError, match=message):
        Dataset("bad", x, y, num_classes=2)


# ---------------------------------------------------------------------------- names and splits
def test_unknown_dataset_lists_the_available_ones():
    with pytest.raises(ValueError) as excinfo:
        load_dataset("svhn")
    assert one_line(excinfo) == ("unknown dataset 'svhn'; available: " + ", ".join(DATASETS)
                                 + ", or the path of a .pt/.npz file")


@pytest.mark.parametrize("name, split, allowed", [("digits", "validation", "train, test"),
                                                  ("mnist", "val", "train, test"),
                                                  ("tinyimagenet", "dev", "train, test, val")])
def test_unknown_split_names_the_choices(name, split, allowed, tmp_path):
    with pytest.raises(ValueError) as excinfo:
        load_dataset(name, tmp_path, split=split)
    assert one_line(excinfo) == f"unknown split {split!r} for {name}; use one of: {allowed}"


def test_names_are_matched_loosely(tmp_path):
    write_mnist(tmp_path / "fashion_mnist", n=3)
    for spelling in ("fashion-mnist", "Fashion_MNIST", "FashionMNIST"):
        assert load_dataset(spelling, tmp_path).name == "fashion-mnist"


def test_default_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HYPERCERT_DATA", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    write_mnist(tmp_path / "mnist", n=4)
    assert len(load_dataset("mnist")) == 4
    monkeypatch.delenv("HYPERCERT_DATA")
    assert data.default_data_dir() == Path("data")


# ---------------------------------------------------------------------------- digits
def test_digits_splits_and_scaling():
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    assert (len(train), len(test)) == (1347, 450)
    for ds in (train, test):
        assert ds.x.shape[1:] == (1, 8, 8) and ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
        assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0 and ds.num_classes == 10
    # stratified: every class keeps its share in the test split
    assert torch.bincount(test.y, minlength=10).min() >= 43  # 174 to 183 images per class, a quarter each


def test_digits_match_the_demo_split_exactly():
    from benchmarks.digits_demo import load_data

    x_tr, y_tr, x_te, y_te = load_data()
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    assert torch.equal(train.x.flatten(1), x_tr) and torch.equal(train.y, y_tr)
    assert torch.equal(test.x.flatten(1), x_te) and torch.equal(test.y, y_te)


# ---------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
@pytest.mark.parametrize("name", ["a-idx.gz", "a-idx"])
def test_read_idx_round_trips_every_type(tmp_path, dtype, name):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(np.dtype(dtype).newbyteorder("="))
    if dtype == "u1":
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    out = read_idx(write_idx(tmp_path / name, array))
    assert out.shape == (2, 3, 4) and out.dtype.isnative and out.flags.writeable
    np.testing.assert_array_equal(out, array)


def write_raw(path: Path, payload: bytes, gz: bool = True) -> Path:
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


@pytest.mark.parametrize("payload, message", [
    (b"\x00\x00\x08", "not an IDX file \\(bad magic number 0x000008\\)"),
    (b"\x12\x34\x08\x01\x00\x00\x00\x01\x05", "not an IDX file \\(bad magic number 0x12340801\\)"),
    # 0x07 is no IDX type
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "not an IDX file \\(bad magic number 0x00000701\\)"),
    (b"\x00\x00\x08\x00", "not an IDX file \\(bad magic number 0x00000800\\)"),  # zero dimensions
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header \\(8 bytes, 3 dimensions need 16\\)"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x04\x01\x02",
     "IDX shape \\(4,\\) needs 4 data bytes, file has 2 \\(truncated\\)"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02",
     "IDX shape \\(1,\\) needs 1 data bytes, file has 2 \\(trailing bytes\\)"),
])
def test_read_idx_rejects_corrupt_files(tmp_path, payload, message):
    path = write_raw(tmp_path / "bad-idx1-ubyte.gz", payload)
    with pytest.raises(ValueError) as excinfo:
        read_idx(path)
    assert re.fullmatch(re.escape(str(path)) + ": " + message, one_line(excinfo))


def test_read_idx_rejects_a_truncated_gzip(tmp_path):
    whole = gzip.compress(idx_bytes(np.zeros((50, 28, 28), np.uint8)))
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=re.escape(f"{path}: corrupt gzip data")):
        read_idx(path)


def test_read_idx_missing_or_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_idx(tmp_path / "nope.gz")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ValueError, match="empty: empty file"):
        read_idx(tmp_path / "empty")


@pytest.mark.parametrize("key, sub", [("mnist", ""), ("mnist", "mnist"), ("mnist", "MNIST/raw"),
                                      ("fashion-mnist", "fashion_mnist"), ("fashion-mnist", "fashion-mnist"),
                                      ("fashion-mnist", "FashionMNIST/raw")])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_loader_reads_every_layout(tmp_path, key, sub, gz):
    images, labels = write_mnist(tmp_path / sub if sub else tmp_path, split="test", n=12, gz=gz)
    ds = load_dataset(key, tmp_path, split="test")
    assert ds.name == key and ds.x.shape == (12, 1, 28, 28) and ds.x.dtype == torch.float32
    assert torch.equal(ds.x, torch.from_numpy(images).float().div(255).unsqueeze(1))
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert ds.y.tolist() == labels.tolist() and ds.num_classes == 10 and len(ds.classes) == 10


def test_idx_train_split_and_class_names(tmp_path):
    write_mnist(tmp_path / "fashion_mnist", split="train", n=7, seed=3)
    ds = load_dataset("fashion-mnist", tmp_path, split="train")
    assert len(ds) == 7 and ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    with pytest.raises(FileNotFoundError, match="fashion-mnist test files not found"):
        load_dataset("fashion-mnist", tmp_path, split="test")


def test_idx_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as excinfo:
        load_dataset("mnist", tmp_path)
    message = one_line(excinfo)
    assert message.startswith("mnist test files not found: looked for t10k-images-idx3-ubyte[.gz] and "
                              "t10k-labels-idx1-ubyte[.gz] in ")
    for folder in (tmp_path, tmp_path / "mnist", tmp_path / "MNIST" / "raw"):
        assert str(folder) in message
    assert message.endswith("pass download=True (--download) to fetch them")


def test_idx_images_and_labels_must_agree_in_count(tmp_path):
    write_mnist(tmp_path, n=12)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(10, np.uint8))
    with pytest.raises(ValueError) as excinfo:
        load_dataset("mnist", tmp_path)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    assert one_line(excinfo) == f"{images}: 12 images but t10k-labels-idx1-ubyte.gz has 10 labels"


def test_idx_labels_out_of_range(tmp_path):
    write_mnist(tmp_path, n=3)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 10, 2], np.uint8))
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(ValueError, match=re.escape(f"{labels}: label 10 outside [0, 10)")):
        load_dataset("mnist", tmp_path)


def test_idx_images_must_be_3d_uint8(tmp_path):
    write_mnist(tmp_path, n=3)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((3, 784), np.uint8))
    with pytest.raises(ValueError, match=re.escape("expected uint8 images (N, H, W), got uint8 (3, 784)")):
        load_dataset("mnist", tmp_path)


def test_md5sums_beside_the_files_are_checked(tmp_path):
    write_mnist(tmp_path / "mnist", n=5)
    good = {name: data._md5(tmp_path / "mnist" / name) for name in
            ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    sums = tmp_path / "MD5SUMS"  # one level up, as in shared/data
    sums.write_text("".join(f"{md5}  mnist/{name}\n" for name, md5 in good.items()))
    assert len(load_dataset("mnist", tmp_path)) == 5
    sums.write_text(f"{'0' * 32}  mnist/t10k-labels-idx1-ubyte.gz\n")
    with pytest.raises(ValueError) as excinfo:
        load_dataset("mnist", tmp_path)
    bad = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    assert one_line(excinfo) == (f"{bad}: MD5 {good[bad.name]} does not match {'0' * 32} listed in MD5SUMS "
                                 "(corrupt or replaced file)")


def test_the_other_datasets_files_are_not_taken(tmp_path, monkeypatch):
    # MNIST and Fashion-MNIST share file names; a flat folder of Fashion files must not load as MNIST.
    write_mnist(tmp_path, n=4)
    fashion_md5 = {name: data._md5(tmp_path / name) for name in ("t10k-images-idx3-ubyte.gz",
                                                                  "t10k-labels-idx1-ubyte.gz")}
    monkeypatch.setitem(data._IDX_MD5, "fashion-mnist", fashion_md5)
    assert len(load_dataset("fashion-mnist", tmp_path)) == 4
    with pytest.raises(ValueError, match="this is fashion-mnist's t10k-images-idx3-ubyte.gz, not mnist's"):
        load_dataset("mnist", tmp_path)


@needs_shared_mnist
def test_real_mnist_test_split():
    ds = load_dataset("mnist", SHARED, split="test")
    assert len(ds) == 10000 and ds.x.shape == (10000, 1, 28, 28) and ds.x.dtype == torch.float32
    assert int(ds.y[0]) == 7
    assert torch.bincount(ds.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0


@pytest.mark.skipif(not (SHARED / "fashion_mnist").is_dir(), reason=f"no real Fashion-MNIST under {SHARED}")
def test_real_fashion_mnist_test_split():
    ds = load_dataset("fashion-mnist", SHARED, split="test")
    assert ds.x.shape == (10000, 1, 28, 28) and torch.bincount(ds.y).tolist() == [1000] * 10
    assert int(ds.y[0]) == 9  # the first test image is an ankle boot


@needs_shared_mnist
def test_real_mnist_files_are_not_taken_for_fashion(tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes((SHARED / "mnist" / name).read_bytes())
    with pytest.raises(ValueError, match="this is mnist's t10k-images-idx3-ubyte.gz, not fashion-mnist's"):
        load_dataset("fashion-mnist", tmp_path)


# ---------------------------------------------------------------------------- IDX downloads
def gz_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.glob("*.gz")}


def test_mnist_download_falls_back_to_the_next_mirror(tmp_path, server, monkeypatch):
    images, labels = write_mnist(tmp_path / "src", n=6)
    files = gz_files(tmp_path / "src")
    monkeypatch.setitem(data._IDX_MD5, "mnist", {n: data._md5(tmp_path / "src" / n) for n in files})
    first, second = data._IDX_MIRRORS["mnist"]
    server.files = {second + name: body for name, body in files.items()}  # the first mirror answers 404
    ds = load_dataset("mnist", tmp_path / "root", download=True)
    assert ds.y.tolist() == labels.tolist()
    assert server.requested == [first + "t10k-images-idx3-ubyte.gz", second + "t10k-images-idx3-ubyte.gz",
                                first + "t10k-labels-idx1-ubyte.gz", second + "t10k-labels-idx1-ubyte.gz"]
    assert sorted(p.name for p in (tmp_path / "root" / "mnist").iterdir()) == sorted(files)  # no .part left
    server.requested.clear()
    load_dataset("mnist", tmp_path / "root", download=True)
    assert server.requested == []  # present files are not fetched again


def test_download_rejects_bytes_with_the_wrong_md5(tmp_path, server):
    write_mnist(tmp_path / "src", n=3)
    mirror = data._IDX_MIRRORS["fashion-mnist"][0]
    server.files = {mirror + name: body for name, body in gz_files(tmp_path / "src").items()}
    with pytest.raises(DownloadError) as excinfo:
        load_dataset("fashion-mnist", tmp_path / "root", download=True)
    assert one_line(excinfo).startswith("could not download t10k-images-idx3-ubyte.gz (" + mirror)
    assert "does not match the published bef4ecab320f06d8554ea6380940ec79" in str(excinfo.value)
    assert list((tmp_path / "root" / "fashion_mnist").iterdir()) == []  # nothing half-written stays behind


def test_download_without_network_says_so(tmp_path):
    with pytest.raises(DownloadError, match="could not download t10k-images-idx3-ubyte.gz .*HTTP Error 404"):
        load_dataset("mnist", tmp_path, download=True)


@needs_shared_mnist
def test_mnist_download_checks_the_published_md5s(tmp_path, server):
    # The real files served locally: the checksums in the module are the published ones.
    mirror = data._IDX_MIRRORS["mnist"][0]
    server.files = {mirror + name: body for name, body in gz_files(SHARED / "mnist").items() if "t10k" in name}
    ds = load_dataset("mnist", tmp_path, download=True)
    assert len(ds) == 10000 and int(ds.y[0]) == 7


# ---------------------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_batches(tmp_path, protocol):
    written = write_cifar10(tmp_path, n_per_batch=3, protocol=protocol)
    for split, n in (("train", 15), ("test", 3)):
        ds = load_dataset("cifar10", tmp_path, split=split)
        pixels, labels = written[split]
        assert ds.x.shape == (n, 3, 32, 32) and ds.x.dtype == torch.float32 and ds.num_classes == 10
        assert torch.equal(ds.x, torch.from_numpy(pixels).float().div(255).reshape(n, 3, 32, 32))
        assert ds.y.tolist() == labels.tolist() and ds.classes == CIFAR10_CLASSES
    # the first 1024 values of a row are the red plane: pixel (0, 0) of channel 0
    assert float(ds.x[0, 0, 0, 0]) == float(torch.tensor(pixels[0, 0]).float() / 255)
    assert float(ds.x[0, 2, 0, 1]) == float(torch.tensor(pixels[0, 2049]).float() / 255)  # blue plane, column 1


def test_cifar_pickle_written_by_python2_like_the_originals(tmp_path):
    write_cifar10(tmp_path)
    pixels = np.random.default_rng(5).integers(0, 256, size=(4, 3072), dtype=np.uint8)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(py2_cifar_batch_bytes(pixels, [3, 0, 9, 1]))
    ds = load_dataset("cifar10", tmp_path)
    assert ds.y.tolist() == [3, 0, 9, 1]
    assert torch.equal(ds.x, torch.from_numpy(pixels).float().div(255).reshape(4, 3, 32, 32))


def test_cifar10_under_a_named_folder_and_without_meta(tmp_path):
    write_cifar10(tmp_path / "cifar10")
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "batches.meta").unlink()
    ds = load_dataset("CIFAR-10", tmp_path)
    assert len(ds) == 3 and ds.classes is None


def test_cifar100_fine_labels(tmp_path):
    written = write_cifar100(tmp_path, n=5)
    ds = load_dataset("cifar100", tmp_path, split="train")
    assert ds.x.shape == (5, 3, 32, 32) and ds.num_classes == 100 and int(ds.y[0]) == 99
    assert ds.y.tolist() == written["train"][1].tolist() and ds.classes[99] == "fine99"
    assert len(load_dataset("cifar100", tmp_path, split="test")) == 5


class RunsAShell:
    """What a malicious pickle looks like: unpickling it calls os.system."""

    def __reduce__(self):
        return (os.system, ("echo",))


@pytest.mark.skipif(os.name != "posix", reason="the payload names posix.system")
def test_cifar_unpickler_refuses_code_without_running_it(tmp_path, monkeypatch):
    import posix

    write_cifar10(tmp_path)
    payload = pickle.dumps({b"data": RunsAShell(), b"labels": [0]}, protocol=2)
    calls = []
    monkeypatch.setattr(posix, "system", lambda command: calls.append(command) or 0)
    pickle.loads(payload)  # control: a plain unpickler does run it
    assert calls == ["echo"]
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(payload)
    with pytest.raises(ValueError) as excinfo:
        load_dataset("cifar10", tmp_path)
    assert one_line(excinfo) == (f"{tmp_path / 'cifar-10-batches-py' / 'test_batch'}: refusing to load global "
                                 "posix.system (only numpy arrays may be rebuilt)")
    assert calls == ["echo"]  # not called a second time


def test_cifar_truncated_pickle(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable CIFAR python pickle")):
        load_dataset("cifar10", tmp_path)


@pytest.mark.parametrize("batch, message", [
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]},
     "b'data' must be a uint8 array (N, 3072), found uint8 (2, 100)"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]},
     "b'data' must be a uint8 array (N, 3072), found float32 (2, 3072)"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]}, "2 images but 3 labels"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, -1]}, "label -1 outside [0, 10)"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, "missing key b'data' or b'labels' (keys: [b'data'])"),
    ([1, 2], "expected a dict, found list"),
])
def test_cifar_bad_batches(tmp_path, batch, message):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError) as excinfo:
        load_dataset("cifar10", tmp_path)
    assert one_line(excinfo) == f"{path}: {message}"


def test_cifar_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError) as excinfo:
        load_dataset("cifar100", tmp_path, split="train")
    message = one_line(excinfo)
    assert message.startswith("cifar100 train files (train) not found in ")
    assert str(tmp_path / "cifar-100-python") in message and str(tmp_path / "cifar100" / "cifar-100-python") in message
    assert message.endswith("nor cifar-100-python.tar.gz; pass download=True (--download) to fetch them")


def test_cifar10_download_unpacks_the_archive(tmp_path, server, monkeypatch):
    written = write_cifar10(tmp_path / "src")
    archive = tar_gz_bytes(tmp_path / "src" / "cifar-10-batches-py")
    monkeypatch.setitem(data._CIFAR["cifar10"], "md5", data.hashlib.md5(archive).hexdigest())
    server.files = {"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz": archive}
    ds = load_dataset("cifar10", tmp_path / "root", split="train", download=True)
    assert ds.y.tolist() == written["train"][1].tolist()
    assert sorted(p.name for p in (tmp_path / "root" / "cifar10").iterdir()) == ["cifar-10-batches-py",
                                                                                 "cifar-10-python.tar.gz"]


def test_a_cifar_archive_already_in_the_data_dir_is_unpacked_without_download(tmp_path, monkeypatch):
    """torchvision leaves cifar-10-python.tar.gz in the data folder itself: it was ignored (not found)."""
    written = write_cifar10(tmp_path / "src")
    archive = tar_gz_bytes(tmp_path / "src" / "cifar-10-batches-py")
    monkeypatch.setitem(data._CIFAR["cifar10"], "md5", data.hashlib.md5(archive).hexdigest())
    root = tmp_path / "root"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(archive)
    ds = load_dataset("cifar10", root, split="train")  # no download=True: nothing is fetched
    assert ds.y.tolist() == written["train"][1].tolist()
    assert (root / "cifar-10-batches-py").is_dir()


def test_a_damaged_archive_in_the_data_dir_does_not_hide_a_good_one(tmp_path, monkeypatch):
    """An interrupted download left in the data folder used to stop the good archive beside it (or a
    fresh download) from being used: 'MD5 does not match'."""
    written = write_cifar10(tmp_path / "src")
    archive = tar_gz_bytes(tmp_path / "src" / "cifar-10-batches-py")
    monkeypatch.setitem(data._CIFAR["cifar10"], "md5", data.hashlib.md5(archive).hexdigest())
    root = tmp_path / "root"
    (root / "cifar10").mkdir(parents=True)
    (root / "cifar-10-python.tar.gz").write_bytes(archive[:100])  # half-written
    (root / "cifar10" / "cifar-10-python.tar.gz").write_bytes(archive)
    assert load_dataset("cifar10", root, split="train").y.tolist() == written["train"][1].tolist()


def test_cifar_archive_with_the_wrong_md5_is_not_unpacked(tmp_path):
    (tmp_path / "cifar100").mkdir()
    (tmp_path / "cifar100" / "cifar-100-python.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(ValueError, match="does not match the published eb9058c3a382ffc7106e4002c42a8d85"):
        load_dataset("cifar100", tmp_path, download=True)


def evil_tar(member: tarfile.TarInfo, body: bytes = b"pwned") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        member.size = len(body) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(body) if member.isfile() else None)
    return buffer.getvalue()


def symlink_member() -> tarfile.TarInfo:
    link = tarfile.TarInfo("cifar-10-batches-py/test_batch")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return link


@pytest.mark.parametrize("member, why", [
    (tarfile.TarInfo("cifar-10-batches-py/../../escaped"), "it would be written outside the target folder"),
    (tarfile.TarInfo("/tmp/escaped-absolute"), "it would be written outside the target folder"),
    (symlink_member(), "links and devices are not unpacked"),
])
def test_tar_members_cannot_escape(tmp_path, server, monkeypatch, member, why):
    archive = evil_tar(member)
    monkeypatch.setitem(data._CIFAR["cifar10"], "md5", data.hashlib.md5(archive).hexdigest())
    server.files = {"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz": archive}
    root = tmp_path / "deep" / "root"
    with pytest.raises(ValueError, match=re.escape(f"refusing member {member.name!r} ({why}")):
        load_dataset("cifar10", root, download=True)
    assert not (tmp_path / "deep" / "escaped").exists() and not Path("/tmp/escaped-absolute").exists()
    assert [p.name for p in (root / "cifar10").iterdir()] == ["cifar-10-python.tar.gz"]  # scratch cleaned up


def test_zip_members_cannot_escape(tmp_path):
    archive = tmp_path / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", "n1\n")
        zf.writestr("tiny-imagenet-200/../../escaped", "pwned")
    with pytest.raises(ValueError, match="refusing member 'tiny-imagenet-200/../../escaped'"):
        data._unpack(archive, tmp_path / "tiny-imagenet-200")
    assert not (tmp_path.parent / "escaped").exists() and not (tmp_path / "tiny-imagenet-200").exists()


# ---------------------------------------------------------------------------- TinyImageNet
WNIDS = ["n09999999", "n01443537", "n02124075"]  # unsorted, as in the real wnids.txt


@pytest.fixture
def npy_images(monkeypatch):
    """Decode the stand-in images, so the folder logic is tested with or without Pillow."""
    monkeypatch.setattr(data, "_read_image", lambda path: np.load(path))


def test_tinyimagenet_folder_layout_and_labels(tmp_path, npy_images):
    write_tinyimagenet(tmp_path, WNIDS, per_class=2, val=["n02124075", "n09999999", "n01443537", "n09999999"],
                       save=save_npy_as, size=8)
    train = load_dataset("tinyimagenet", tmp_path, split="train")
    assert train.x.shape == (6, 3, 8, 8) and train.num_classes == 3 and train.classes == tuple(sorted(WNIDS))
    assert train.y.tolist() == [0, 0, 1, 1, 2, 2]
    for x, y in zip(train.x, train.y, strict=True):
        assert torch.equal(x[:, 0, 0], torch.from_numpy(class_colour(int(y))).float() / 255)
    for split in ("test", "val"):
        test = load_dataset("tinyimagenet", tmp_path, split=split)
        assert test.y.tolist() == [1, 2, 0, 2]
        colours = np.stack([class_colour(i) for i in (1, 2, 0, 2)])
        assert torch.equal(test.x[:, :, 3, 3], torch.from_numpy(colours) / 255)


def test_tinyimagenet_jpegs(tmp_path):
    pytest.importorskip("PIL", reason="Pillow decodes TinyImageNet's JPEGs; not installed here")
    write_tinyimagenet(tmp_path / "tinyimagenet", WNIDS, per_class=2, val=["n01443537", "n09999999"],
                       save=save_jpeg)
    train = load_dataset("tinyimagenet", tmp_path, split="train")
    assert train.x.shape == (6, 3, 64, 64) and train.x.dtype == torch.float32
    colours = torch.stack([torch.from_numpy(class_colour(int(y))) for y in train.y]).float() / 255
    assert (train.x.mean(dim=(2, 3)) - colours).abs().max() < 3 / 255  # JPEG keeps flat colours
    assert load_dataset("tinyimagenet", tmp_path, split="val").y.tolist() == [0, 2]


def test_tinyimagenet_without_pillow_says_what_to_install(tmp_path, monkeypatch):
    write_tinyimagenet(tmp_path, WNIDS, per_class=1, val=["n01443537"], save=save_npy_as, size=4)
    monkeypatch.setitem(__import__("sys").modules, "PIL", None)  # makes "from PIL import ..." fail
    with pytest.raises(ImportError, match="tinyimagenet's JPEGs are decoded with Pillow: pip install pillow"):
        load_dataset("tinyimagenet", tmp_path, split="val")


def test_tinyimagenet_bad_annotation_and_missing_folder(tmp_path, npy_images):
    with pytest.raises(FileNotFoundError) as excinfo:
        load_dataset("tinyimagenet", tmp_path)
    assert one_line(excinfo).startswith(f"tinyimagenet not found: no wnids.txt in {tmp_path / 'tiny-imagenet-200'}")
    folder = write_tinyimagenet(tmp_path, WNIDS, per_class=1, val=["n01443537"], save=save_npy_as, size=4)
    annotations = folder / "val" / "val_annotations.txt"
    annotations.write_text("val_0.JPEG\tn01443537\t0\t0\t3\t3\nval_1.JPEG\tn00000000\t0\t0\t3\t3\n")
    with pytest.raises(ValueError, match=re.escape(f"{annotations}: line 2: expected")):
        load_dataset("tinyimagenet", tmp_path, split="test")
    annotations.write_text("../../train/n01443537/images/n01443537_0.JPEG\tn01443537\n")  # stay in val/images
    with pytest.raises(ValueError, match=re.escape(f"{annotations}: line 1: expected '<file name>")):
        load_dataset("tinyimagenet", tmp_path, split="test")


def test_tinyimagenet_images_must_share_a_size(tmp_path, npy_images):
    folder = write_tinyimagenet(tmp_path, WNIDS, per_class=1, val=["n01443537"], save=save_npy_as, size=4)
    odd = folder / "train" / "n09999999" / "images" / "n09999999_0.JPEG"
    save_npy_as(odd, np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=re.escape(f"{odd}: image is (5, 4), the others are (4, 4)")):
        load_dataset("tinyimagenet", tmp_path, split="train")


def test_tinyimagenet_download(tmp_path, server, monkeypatch, npy_images):
    write_tinyimagenet(tmp_path / "src", WNIDS, per_class=1, val=["n02124075"], save=save_npy_as, size=4)
    archive = zip_bytes(tmp_path / "src" / "tiny-imagenet-200")
    monkeypatch.setitem(data._TINY, "md5", data.hashlib.md5(archive).hexdigest())
    server.files = {"http://cs231n.stanford.edu/tiny-imagenet-200.zip": archive}
    ds = load_dataset("tinyimagenet", tmp_path / "root", split="val", download=True)
    assert ds.y.tolist() == [1] and (tmp_path / "root" / "tinyimagenet" / "tiny-imagenet-200" / "wnids.txt").is_file()


# ---------------------------------------------------------------------------- .pt / .npz
def test_pt_dict_with_metadata(tmp_path):
    x, y = torch.rand(6, 3, 4, 4) * 2 - 1, torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.int32)
    path = tmp_path / "set.pt"
    torch.save({"x": x.double(), "y": y, "num_classes": 5, "lo": -1.0, "hi": 1.0, "name": "mine"}, path)
    ds = load_tensors(path)
    assert (ds.name, ds.num_classes, ds.lo, ds.hi) == ("mine", 5, -1.0, 1.0)
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64 and torch.equal(ds.y, y.long())
    assert torch.allclose(ds.x, x)


def test_pt_pair_and_grey_images_get_a_channel(tmp_path):
    path = tmp_path / "pair.pt"
    torch.save((torch.rand(4, 5, 5), torch.tensor([3, 0, 1, 1])), path)
    ds = load_dataset(path)  # a path goes to load_tensors
    assert ds.input_shape == (1, 5, 5) and ds.num_classes == 4 and ds.name == "pair"


def test_npz_with_class_names(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, x=np.random.rand(3, 1, 2, 2).astype(np.float32), y=np.array([0, 1, 0]),
             classes=np.array(["cat", "dog", "eel"]))
    ds = load_dataset(str(path))
    assert ds.num_classes == 3 and ds.classes == ("cat", "dog", "eel")


def save_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


GOOD_X = np.full((3, 1, 2, 2), 0.5, np.float32)


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.where(np.arange(12).reshape(3, 1, 2, 2) == 5, np.nan, 0.5), "y": np.array([0, 1, 2])},
     "x contains NaN or infinite values"),
    ({"x": GOOD_X, "y": np.array([0, -2, 1])}, "negative label -2 in y"),
    ({"x": GOOD_X, "y": np.array([0, 1])}, "x has 3 samples but y has 2 labels"),
    ({"x": GOOD_X.astype(np.uint8), "y": np.array([0, 1, 2])},
     "x must be floating point (pixels already scaled), got torch.uint8"),
    ({"x": GOOD_X.reshape(3, 4), "y": np.array([0, 1, 2])}, "x must have shape (N, C, H, W) or (N, H, W), got (3, 4)"),
    ({"x": GOOD_X, "y": np.array([0.0, 1.0, 2.0])}, "y must be a 1-D integer array, got torch.float64 (3,)"),
    ({"x": GOOD_X * 3, "y": np.array([0, 1, 2])},
     "x values span [1.5, 1.5], outside [0, 1]; store 'lo'/'hi' in the file to declare another pixel range"),
    ({"x": GOOD_X, "y": np.array([0, 1, 7]), "num_classes": np.array(5)}, "label 7 in y but only 5 classes"),
    ({"x": GOOD_X, "y": np.array([0, 1, 2]), "num_classes": np.array(2.5)},
     "'num_classes' must be a single int, got 2.5"),
    ({"x": GOOD_X, "y": np.array([0, 1, 2]), "classes": np.array(["a", "b"])}, "label 2 in y but only 2 classes"),
    ({"x": GOOD_X[:0], "y": np.array([], np.int64)}, "no samples"),
    ({"images": GOOD_X, "y": np.array([0, 1, 2])}, "needs arrays 'x' and 'y', has ['images', 'y']"),
])
def test_npz_bad_inputs(tmp_path, arrays, message):
    path = save_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError) as excinfo:
        load_tensors(path)
    assert one_line(excinfo) == f"{path}: {message}"


def test_npz_refuses_pickled_objects(tmp_path):
    path = save_npz(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(ValueError, match=re.escape(f"{path}: cannot be read as .npz without pickle")):
        load_tensors(path)


class NotATensor:
    pass


@pytest.mark.parametrize("obj, message", [
    ({"x": torch.rand(2, 1, 2, 2)}, "the dict needs keys 'x' and 'y', has ['x']"),
    (torch.rand(3), "expected a dict with 'x' and 'y' or an (x, y) pair, found Tensor"),
    ({"x": torch.rand(2, 1, 2, 2), "y": NotATensor()}, "cannot be read by torch.load(weights_only=True)"),
])
def test_pt_bad_inputs(tmp_path, obj, message):
    path = tmp_path / "bad.pt"
    torch.save(obj, path)
    with pytest.raises(ValueError) as excinfo:
        load_tensors(path)
    assert one_line(excinfo).startswith(f"{path}: {message}")


def test_tensor_files_that_are_missing_or_of_another_kind(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_dataset(tmp_path / "missing.pt")
    other = tmp_path / "set.csv"
    other.write_text("1,2\n")
    with pytest.raises(ValueError, match=re.escape(f"{other}: expected a .pt, .pth or .npz file")):
        load_tensors(other)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 nonsense")
    with pytest.raises(ValueError, match="cannot be read as .npz without pickle"):
        load_tensors(broken)
