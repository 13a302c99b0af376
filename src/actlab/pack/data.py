"""A pack's data: one DataModule's tensors, with every member's own training batch order."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch

from actlab.data.resumable import ResumableEpoch, ResumesTrainLoader, epoch_batches_done


class MemberBatchLoader(ResumableEpoch):
    """Training batches of members at once: ``(images (R, B, ...), labels (R, B), rows (R,))``,
    member k's batch drawn from its own permutation of the training set, shuffled by its own
    generator (the stream its single run shuffles with: see
    :class:`~actlab.data.fashion_mnist.TensorBatchLoader`).

    ``rows()``, asked when an epoch's iterator starts, names the members whose batches to draw
    (None: all K); each batch carries those member indices (ascending). Once stopped members
    leave the pack's stack their batches are not gathered at all (every member's generator
    still shuffles each epoch, as its single run's would). With ``batches_done`` a fit resumed
    inside an epoch goes on with that epoch's orders (:mod:`actlab.data.resumable`)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, generators: list[torch.Generator],
                 rows: Callable[[], list[int] | None] = lambda: None,
                 batches_done: Callable[[], int | None] | None = None) -> None:  # fmt: skip
        self.images, self.labels, self.batch_size, self.generators = images, labels, batch_size, generators
        self.rows, self.batches_done = rows, batches_done

    def _shuffle_generators(self) -> list[torch.Generator]:
        return self.generators

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        self._begin_epoch()
        return self._batches()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        first = self._skip() * self.batch_size
        orders = torch.stack([torch.randperm(n, generator=g) for g in self.generators])
        rows = self.rows()
        if rows is None:  # every member's (no copy of the orders)
            rows = torch.arange(len(self.generators))
        else:
            rows = torch.tensor(rows, dtype=torch.long)
            orders = orders[rows]
        orders = orders.to(self.labels.device, non_blocking=True)
        rows = rows.to(self.labels.device)
        for start in range(first, n, self.batch_size):
            index = orders[:, start : start + self.batch_size]
            flat = index.reshape(-1)  # index_select, not images[index]: the same rows, gathered ~3x faster on a CPU
            # no reference kept here: once the step lets go of a batch, the next is gathered into its memory,
            # still in cache (~25 us a step of a pack of 8 tiny MLPs on a CPU)
            yield (self.images.index_select(0, flat).view(*index.shape, *self.images.shape[1:]),
                   self.labels.index_select(0, flat).view(index.shape), rows)  # fmt: skip


class PackDataModule(ResumesTrainLoader, L.LightningDataModule):
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
        return self._resumable(MemberBatchLoader(data.train_x, data.train_y, data.batch_size, self.generators,
                                                 self._rows_in_stack, epoch_batches_done(self.trainer)))  # fmt: skip

    def _rows_in_stack(self) -> list[int] | None:
        """The members the pack's stack computes now (None: all of them)."""
        return getattr(self.trainer.lightning_module, "stack_rows", None) if self.trainer is not None else None

    def val_dataloader(self):
        return self.members_data.val_dataloader()

    def test_dataloader(self):
        return self.members_data.test_dataloader()

    def state_dict(self) -> dict[str, Any]:
        return {"shuffle_generators": [g.get_state() for g in self.generators], **self._loader_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for generator, state in zip(self.generators, state_dict["shuffle_generators"]):
            generator.set_state(state)
        self._load_loader_state(state_dict)
