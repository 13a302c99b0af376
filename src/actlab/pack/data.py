"""A pack's data: one DataModule's tensors, with every member's own training batch order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
import torch


class MemberBatchLoader:
    """Training batches of K members at once: ``(images (K, B, ...), labels (K, B))``, member
    k's batch drawn from its own permutation of the training set, shuffled by its own
    generator (the stream its single run shuffles with: see
    :class:`~actlab.data.fashion_mnist.TensorBatchLoader`)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 generators: list[torch.Generator]) -> None:  # fmt: skip
        self.images, self.labels, self.batch_size, self.generators = images, labels, batch_size, generators

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        orders = torch.stack([torch.randperm(n, generator=g) for g in self.generators])
        orders = orders.to(self.labels.device, non_blocking=True)
        for start in range(0, n, self.batch_size):
            index = orders[:, start : start + self.batch_size]
            yield self.images[index], self.labels[index]


class PackDataModule(L.LightningDataModule):
    """The members' DataModule (their data configs are equal) seen by a pack: validation and
    test batches as the members' own, training batches per member (:class:`MemberBatchLoader`).

    ``shuffle_states[k]`` is the RNG state member k's single run would start shuffling from.
    The members' generators are saved in every checkpoint (``state_dict``), as a single run's
    DataModule saves its one generator.
    """

    def __init__(self, members_data: L.LightningDataModule, shuffle_states: list[torch.Tensor]) -> None:
        super().__init__()
        self.members_data = members_data
        self.generators = [torch.Generator().set_state(state) for state in shuffle_states]

    def setup(self, stage: str | None = None) -> None:
        self.members_data.trainer = self.trainer  # the training device: where the tensors go
        self.members_data.setup(stage)

    def probe_set(self, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.members_data.probe_set(size)

    def train_dataloader(self) -> MemberBatchLoader:
        data = self.members_data
        return MemberBatchLoader(data.train_x, data.train_y, data.batch_size, self.generators)

    def val_dataloader(self):
        return self.members_data.val_dataloader()

    def test_dataloader(self):
        return self.members_data.test_dataloader()

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        return self.members_data.transfer_batch_to_device(batch, device, dataloader_idx)

    def state_dict(self) -> dict[str, Any]:
        return {"shuffle_generators": [g.get_state() for g in self.generators]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for generator, state in zip(self.generators, state_dict["shuffle_generators"]):
            generator.set_state(state)
