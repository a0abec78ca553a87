"""Data for the examples: the UCI digits shipped with scikit-learn (offline) and CIFAR-10 via torchvision."""

from __future__ import annotations

import os
from typing import Optional

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class DigitsDataModule(LightningDataModule):
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
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

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

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


class CIFAR10DataModule(LightningDataModule):
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
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be positive, got {batch_size}")
        if not 0 <= val_size < 50_000:
            raise ValueError(f"`val_size` must be in [0, 50000), got {val_size}")
        self.save_hyperparameters()
        self.data_dir = os.path.expanduser(data_dir)
        self.download = download
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.seed = seed
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

    @staticmethod
    def transforms(train: bool):
        """The torchvision transform of the training (augmented) or evaluation split."""
        from torchvision import transforms as T

        normalize = [T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
        if not train:
            return T.Compose(normalize)
        return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *normalize])

    def _dataset(self, train: bool, augment: bool) -> Dataset:
        from torchvision.datasets import CIFAR10

        try:
            return CIFAR10(self.data_dir, train=train, transform=self.transforms(augment), download=False)
        except RuntimeError as err:
            raise RuntimeError(
                f"CIFAR-10 was not found in data_dir={self.data_dir!r} ({err}). Set `--data.init_args.download=true`"
                " (needs network access) or point `data_dir` at a folder holding `cifar-10-batches-py`."
            ) from err

    def prepare_data(self) -> None:
        # Called on one process only: the one place that downloads.
        if self.download:
            from torchvision.datasets import CIFAR10

            CIFAR10(self.data_dir, train=True, download=True)
            CIFAR10(self.data_dir, train=False, download=True)

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

    def _loader(self, dataset: Optional[Dataset], shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
