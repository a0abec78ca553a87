"""Data for the examples.

- :class:`DigitsDataModule`: the UCI digits shipped with scikit-learn (offline, seconds).
- :class:`FashionMNISTDataModule`: Fashion-MNIST read straight from its gzipped IDX files (Debian's
  ``dataset-fashion-mnist`` installs them under ``/usr/share/datasets/fashion-mnist``), or downloaded by
  torchvision where there is a network.
- :class:`CIFAR10DataModule`, :class:`CIFAR100DataModule`: through torchvision, standard augmentation.
- :class:`TinyImageNetDataModule`: a local ``tiny-imagenet-200`` folder (torchvision ``ImageFolder``).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# Per-channel statistics of the training sets (CIFAR-100: the usual values, which the SynFlow code rounds to
# three digits; Tiny ImageNet: the SynFlow code's values).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
TINY_IMAGENET_MEAN = (0.480, 0.448, 0.397)
TINY_IMAGENET_STD = (0.276, 0.269, 0.282)
# Mean and standard deviation of all 60,000 Fashion-MNIST training pixels (scaled to [0, 1]).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530


class _SplitDataModule(LightningDataModule):
    """Train/validation/test data sets that subclasses fill in ``setup``, served by ``_loader``."""

    batch_size: int
    num_workers: int
    train_set: Optional[Dataset] = None
    val_set: Optional[Dataset] = None
    test_set: Optional[Dataset] = None

    def _keep_split_args(
        self, data_dir: str, download: bool, batch_size: int, num_workers: int, val_size: int, seed: int, train_pool: int
    ) -> None:
        """Check and keep the arguments of a data set with ``train_pool`` training images, ``val_size`` of them
        held out (seeded) for validation."""
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be positive, got {batch_size}")
        if not 0 <= val_size < train_pool:
            raise ValueError(f"`val_size` must be in [0, {train_pool}), got {val_size}")
        self.data_dir = os.path.expanduser(data_dir)
        self.download = download
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.seed = seed

    def _loader(self, dataset: Optional[Dataset], shuffle: bool) -> DataLoader:
        return _image_loader(dataset, self.batch_size, shuffle, self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


class DigitsDataModule(_SplitDataModule):
    """The 1,797 8x8 handwritten digits of scikit-learn's ``load_digits`` (no download needed).

    Images are tensors of shape (1, 8, 8) scaled to [0, 1]; the split into train/val/test is a fixed,
    seeded permutation, so every run and every process sees the same sets.

    Args:
        batch_size: Samples per batch for every split.
        val_fraction: Fraction of the 1,797 images held out for validation.
        test_fraction: Fraction of the images held out for testing.
        seed: Seed of the permutation that splits the data.
        num_workers: Data-loader worker processes (0 loads in the main process, best for this tiny set).
    """

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be positive, got {batch_size}")
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"`val_fraction` and `test_fraction` must be in (0, 1) with a sum below 1, got {val_fraction} and {test_fraction}"
            )
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.num_workers = num_workers

    def setup(self, stage: str) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).div_(16.0).unsqueeze(1)  # pixel values are 0..16
        y = torch.tensor(digits.target, dtype=torch.long)
        n = len(y)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        n_test = round(self.test_fraction * n)
        n_val = round(self.val_fraction * n)
        test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
        self.train_set = TensorDataset(x[train], y[train])
        self.val_set = TensorDataset(x[val], y[val])
        self.test_set = TensorDataset(x[test], y[test])

    def _loader(self, dataset: Optional[Dataset], shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers)



class _CIFARDataModule(_SplitDataModule):
    """CIFAR-10/100 through torchvision (subclasses set the data set class and its statistics)."""

    _name = "CIFAR-10"
    _dataset_class = "CIFAR10"
    _folder = "cifar-10-batches-py"
    _mean = CIFAR10_MEAN
    _std = CIFAR10_STD

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        batch_size: int = 128,
        num_workers: int = 4,
        val_size: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self._keep_split_args(data_dir, download, batch_size, num_workers, val_size, seed, train_pool=50_000)
        self.save_hyperparameters()

    @classmethod
    def transforms(cls, train: bool):
        """The torchvision transform of the training (augmented) or evaluation split."""
        from torchvision import transforms as T

        normalize = [T.ToTensor(), T.Normalize(cls._mean, cls._std)]
        if not train:
            return T.Compose(normalize)
        return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *normalize])

    @classmethod
    def _torchvision_class(cls):
        import torchvision.datasets

        return getattr(torchvision.datasets, cls._dataset_class)

    def _dataset(self, train: bool, augment: bool) -> Dataset:
        try:
            return self._torchvision_class()(self.data_dir, train=train, transform=self.transforms(augment), download=False)
        except RuntimeError as err:
            raise RuntimeError(
                f"{self._name} was not found in data_dir={self.data_dir!r} ({err}). Set `--data.init_args.download=true`"
                f" (needs network access) or point `data_dir` at a folder holding `{self._folder}`."
            ) from err

    def prepare_data(self) -> None:
        # Called on one process only: the one place that downloads.
        if self.download:
            self._torchvision_class()(self.data_dir, train=True, download=True)
            self._torchvision_class()(self.data_dir, train=False, download=True)

    def setup(self, stage: str) -> None:
        if self.test_set is None:
            self.test_set = self._dataset(train=False, augment=False)
        if stage in ("fit", "validate") and self.train_set is None:
            train = self._dataset(train=True, augment=True)
            if self.val_size == 0:
                self.train_set, self.val_set = train, self.test_set
            else:
                order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed)).tolist()
                held_out, kept = order[: self.val_size], order[self.val_size :]
                self.train_set = Subset(train, kept)
                self.val_set = Subset(self._dataset(train=True, augment=False), held_out)



def _image_loader(dataset: Optional[Dataset], batch_size: int, shuffle: bool, num_workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        drop_last=shuffle and dataset is not None and len(dataset) > batch_size,  # type: ignore[arg-type]
    )


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 through ``torchvision.datasets.CIFAR10`` (50,000 training and 10,000 test images, 3x32x32).

    Training images are augmented the standard way (random 32x32 crop with 4 pixels of zero padding,
    random horizontal flip); every split is normalised with the per-channel mean and standard deviation
    of the training set.

    Args:
        data_dir: Folder holding (or receiving) the ``cifar-10-batches-py`` folder.
        download: Download the data set into ``data_dir`` if it is not there (needs network access).
        batch_size: Samples per batch for every split.
        num_workers: Data-loader worker processes.
        val_size: Training images held out (seeded, without augmentation) for validation. 0 validates on
            the test set, as the pruning-at-initialization papers do.
        seed: Seed of the permutation that picks the held-out validation images.
    """


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 through ``torchvision.datasets.CIFAR100`` (50,000 training and 10,000 test images of 100
    classes, 3x32x32), augmented and normalised like :class:`CIFAR10DataModule`.

    Args:
        data_dir: Folder holding (or receiving) the ``cifar-100-python`` folder.
        download: Download the data set into ``data_dir`` if it is not there (needs network access).
        batch_size: Samples per batch for every split.
        num_workers: Data-loader worker processes.
        val_size: Training images held out (seeded, without augmentation) for validation. 0 validates on
            the test set, as the pruning-at-initialization papers do.
        seed: Seed of the permutation that picks the held-out validation images.
    """

    _name = "CIFAR-100"
    _dataset_class = "CIFAR100"
    _folder = "cifar-100-python"
    _mean = CIFAR100_MEAN
    _std = CIFAR100_STD


# ---------------------------------------------------------------------------------------------- IDX files

#: IDX type codes (the third byte of the magic number) and the big-endian numpy types they stand for.
IDX_TYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Union[str, os.PathLike]) -> Tensor:
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzipped or not, into a tensor.

    The format: a magic number of two zero bytes, a type code (0x08 = uint8, ..., 0x0E = float64) and the
    number of dimensions; one big-endian uint32 per dimension; then the values, big-endian, row-major.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not an IDX file (bad magic number, truncated header, payload of the wrong size, or a
            corrupt gzip stream); the message names the file.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read it as a gzipped IDX file: {err}") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise ValueError(
            f"{path}: not an IDX file: it starts with {('0x' + data[:4].hex()) if data else 'nothing (empty)'}, expected the"
            f" magic number 0x0000 followed by a type code ({', '.join(f'0x{c:02x}' for c in IDX_TYPES)}) and the number"
            f" of dimensions"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: IDX header truncated: {ndim} dimensions need {header} bytes, the file has {len(data)}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_TYPES[data[2]])
    count = math.prod(shape)
    if len(data) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path}: the IDX header says {'x'.join(map(str, shape))} values of {dtype.name} ({count * dtype.itemsize} bytes),"
            f" but {len(data) - header} bytes follow it"
        )
    values = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    return torch.from_numpy(values.astype(dtype.newbyteorder("="), copy=True))


class FashionMNISTDataModule(_SplitDataModule):
    """Fashion-MNIST (Xiao et al. 2017): 60,000 training and 10,000 test 28x28 grayscale images of 10 kinds
    of clothing, read directly from the four gzipped IDX files.

    The files (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
    ``t10k-labels-idx1-ubyte.gz``, or the same names unzipped) are looked for in ``data_dir`` and in
    ``data_dir/FashionMNIST/raw`` (where torchvision puts them). Offline, Debian's ``dataset-fashion-mnist``
    package installs them under ``/usr/share/datasets/fashion-mnist``, the default. Where they are absent
    and ``download`` is set, ``torchvision.datasets.FashionMNIST`` downloads them into ``data_dir``.

    The whole set lives in memory as normalised float tensors (about 220 MB), so loading costs nothing
    per batch; there is no augmentation. Images have shape (1, 28, 28).

    Args:
        data_dir: Folder holding the IDX files (or receiving them with ``download``).
        download: Download the files with torchvision when they are not in ``data_dir`` (needs network access).
        batch_size: Samples per batch for every split.
        num_workers: Data-loader worker processes (0, the default, is best for in-memory tensors).
        val_size: Training images held out (seeded) for validation. 0 validates on the test set, as the
            pruning-at-initialization papers do.
        train_size: Train on a seeded subset of this many of the (remaining) training images; ``None``
            uses them all. For quick studies on a CPU.
        seed: Seed of the permutation that picks the validation images and the training subset.
        normalize: Subtract the training set's pixel mean (0.2860) and divide by its standard deviation
            (0.3530); otherwise pixels are just scaled to [0, 1].
    """

    FILES = {
        "train_images": "train-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }

    def __init__(
        self,
        data_dir: str = "/usr/share/datasets/fashion-mnist",
        download: bool = False,
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int = 0,
        train_size: Optional[int] = None,
        seed: int = 0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self._keep_split_args(data_dir, download, batch_size, num_workers, val_size, seed, train_pool=60_000)
        if train_size is not None and not 0 < train_size <= 60_000 - val_size:
            raise ValueError(f"`train_size` must be in [1, {60_000 - val_size}] (60000 minus `val_size`) or None, got {train_size}")
        self.save_hyperparameters()
        self.train_size = train_size
        self.normalize = normalize

    def _find(self, stem: str) -> Optional[Path]:
        for folder in (Path(self.data_dir), Path(self.data_dir) / "FashionMNIST" / "raw"):
            for name in (stem + ".gz", stem):
                if (folder / name).is_file():
                    return folder / name
        return None

    def files(self) -> dict[str, Path]:
        """The four IDX files by role (``train_images``, ...); a clear error when one is missing."""
        found = {role: self._find(stem) for role, stem in self.FILES.items()}
        missing = [self.FILES[role] for role, path in found.items() if path is None]
        if missing:
            raise FileNotFoundError(
                f"Fashion-MNIST not found: no {', '.join(m + '[.gz]' for m in missing)} in data_dir={self.data_dir!r}"
                f" or its FashionMNIST/raw folder. Install Debian's `dataset-fashion-mnist` package (files under"
                f" /usr/share/datasets/fashion-mnist), point `data_dir` at a folder with the four IDX files, or set"
                f" `download=true` (needs network access)."
            )
        return found  # type: ignore[return-value]

    def prepare_data(self) -> None:
        # Called on one process only: the one place that downloads.
        if self.download and any(self._find(stem) is None for stem in self.FILES.values()):
            from torchvision.datasets import FashionMNIST

            FashionMNIST(self.data_dir, train=True, download=True)
            FashionMNIST(self.data_dir, train=False, download=True)

    def _load(self, images_path: Path, labels_path: Path) -> tuple[Tensor, Tensor]:
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.dtype != torch.uint8 or images.dim() != 3:
            raise ValueError(f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or len(labels) != len(images):
            raise ValueError(f"{labels_path}: expected {len(images)} labels for the images of {images_path.name}, got shape {tuple(labels.shape)}")
        x = images.unsqueeze(1).float().div_(255.0)
        if self.normalize:
            x.sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD)
        return x, labels.long()

    def setup(self, stage: str) -> None:
        files = None
        if self.test_set is None:
            files = self.files()
            self.test_set = TensorDataset(*self._load(files["test_images"], files["test_labels"]))
        if stage in ("fit", "validate") and self.train_set is None:
            files = files or self.files()
            x, y = self._load(files["train_images"], files["train_labels"])
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
            held_out, kept = order[: self.val_size], order[self.val_size :]
            if self.train_size is not None:
                kept = kept[: self.train_size]
            self.train_set = TensorDataset(x[kept], y[kept])
            self.val_set = TensorDataset(x[held_out], y[held_out]) if self.val_size else self.test_set



# ---------------------------------------------------------------------------------------------- Tiny ImageNet


class _LabelledFiles(Dataset):
    """Images given as (path, class index) pairs, loaded like torchvision's ``ImageFolder``."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable[[Any], Tensor]) -> None:
        from torchvision.datasets.folder import default_loader

        self.samples = samples
        self.targets = [t for _, t in samples]
        self.transform = transform
        self.loader = default_loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, target = self.samples[index]
        return self.transform(self.loader(path)), target


class TinyImageNetDataModule(_SplitDataModule):
    """Tiny ImageNet (200 classes, 100,000 training and 10,000 validation images, 3x64x64) from a local folder.

    ``data_dir`` is the unzipped ``tiny-imagenet-200`` folder (http://cs231n.stanford.edu/tiny-imagenet-200.zip;
    there is no download here). ``train/`` is read with torchvision's ``ImageFolder`` (``train/<wnid>/images/*.JPEG``).
    The official ``val/`` folder is *not* in ``ImageFolder`` layout: it holds ``val/images/*.JPEG`` and
    ``val/val_annotations.txt`` (file name, wnid, box). Both that layout and a ``val/<wnid>/...`` folder
    reorganised for ``ImageFolder`` (as the SynFlow code's setup script makes) are accepted. The test
    images have no labels, so the validation set is the test set, as in the papers.

    Training images are augmented as in the SynFlow code (random 64x64 crop with 4 pixels of padding,
    random horizontal flip); every split is normalised with the per-channel statistics the SynFlow code uses.

    Args:
        data_dir: The ``tiny-imagenet-200`` folder (holding ``train/`` and ``val/``).
        batch_size: Samples per batch for every split.
        num_workers: Data-loader worker processes (JPEG decoding: use several).
    """

    def __init__(self, data_dir: str = "data/tiny-imagenet-200", batch_size: int = 128, num_workers: int = 8) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be positive, got {batch_size}")
        self.save_hyperparameters()
        self.data_dir = os.path.expanduser(data_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers

    @staticmethod
    def transforms(train: bool):
        """The torchvision transform of the training (augmented) or evaluation split."""
        from torchvision import transforms as T

        normalize = [T.ToTensor(), T.Normalize(TINY_IMAGENET_MEAN, TINY_IMAGENET_STD)]
        if not train:
            return T.Compose(normalize)
        return T.Compose([T.RandomCrop(64, padding=4), T.RandomHorizontalFlip(), *normalize])

    def _folder(self, name: str) -> Path:
        folder = Path(self.data_dir) / name
        if not folder.is_dir():
            raise FileNotFoundError(
                f"Tiny ImageNet not found: no {name}/ folder in data_dir={self.data_dir!r}. Unzip"
                f" http://cs231n.stanford.edu/tiny-imagenet-200.zip and point `data_dir` at its tiny-imagenet-200 folder."
            )
        return folder

    def _class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(sorted(p.name for p in self._folder("train").iterdir() if p.is_dir()))}

    def _val_dataset(self) -> Dataset:
        from torchvision.datasets import ImageFolder

        folder, classes = self._folder("val"), self._class_to_idx()
        annotations = folder / "val_annotations.txt"
        if annotations.is_file() and (folder / "images").is_dir():  # the official layout
            samples = []
            for line in annotations.read_text().splitlines():
                if line.strip():
                    name, wnid = line.split("\t")[:2]
                    samples.append((str(folder / "images" / name), classes[wnid]))
            return _LabelledFiles(samples, self.transforms(False))
        val = ImageFolder(str(folder), transform=self.transforms(False))  # reorganised: val/<wnid>/...
        if val.class_to_idx != classes:
            raise ValueError(f"{folder}: its class folders differ from train/'s; expected the 200 wnids of train/")
        return val

    def setup(self, stage: str) -> None:
        from torchvision.datasets import ImageFolder

        if self.test_set is None:
            self.test_set = self._val_dataset()
        if stage in ("fit", "validate") and self.train_set is None:
            self.train_set = ImageFolder(str(self._folder("train")), transform=self.transforms(True))

    def val_dataloader(self) -> DataLoader:  # Tiny ImageNet's labelled validation images are its test set
        return self._loader(self.test_set, shuffle=False)
