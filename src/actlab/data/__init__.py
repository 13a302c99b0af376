"""Datasets as LightningDataModules."""

from actlab.data.fashion_mnist import DataNotFoundError, FashionMNISTDataModule
from actlab.data.idx import CorruptDataError, read_idx

__all__ = ["CorruptDataError", "DataNotFoundError", "FashionMNISTDataModule", "read_idx"]
