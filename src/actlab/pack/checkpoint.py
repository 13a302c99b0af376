"""A pack member's checkpoints, in the format of a single run's: Lightning's checkpoint dict,
so ``resume=true`` on the single run (``python train.py <its overrides> resume=true``)
continues from it, and a pack resumes from its members' checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning
import torch

if TYPE_CHECKING:
    from actlab.pack.training import PackTrainer, _MemberState

CHECKPOINT_DIR = "checkpoints"


def _progress(total: int, current: int, keys: tuple[str, ...]) -> dict[str, dict[str, int]]:
    return {"total": dict.fromkeys(keys, total), "current": dict.fromkeys(keys, current)}


def fit_loop_state(epochs: int, steps: int, steps_per_epoch: int) -> dict[str, Any]:
    """Lightning's fit-loop state after ``epochs`` epochs and ``steps`` optimiser steps, as its
    ModelCheckpoint saves it at an epoch's end (the epoch counted started, not completed)."""
    batch = {**_progress(steps, steps_per_epoch, ("ready", "started", "processed", "completed")), "is_last_batch": True}
    step = _progress(steps, steps_per_epoch, ("ready", "completed"))
    zero_grad = _progress(steps, steps_per_epoch, ("ready", "started", "completed"))
    epoch = {
        "total": {"ready": epochs, "started": epochs, "processed": epochs, "completed": epochs - 1},
        "current": {"ready": epochs, "started": epochs, "processed": epochs, "completed": epochs - 1},
    }
    return {
        "state_dict": {},
        "epoch_loop.state_dict": {"_batches_that_stepped": steps},
        "epoch_loop.batch_progress": batch,
        "epoch_loop.scheduler_progress": _progress(0, 0, ("ready", "completed")),
        "epoch_loop.automatic_optimization.state_dict": {},
        "epoch_loop.automatic_optimization.optim_progress": {"optimizer": {"step": step, "zero_grad": zero_grad}},
        "epoch_loop.manual_optimization.state_dict": {},
        "epoch_loop.manual_optimization.optim_step_progress": _progress(0, 0, ("ready", "completed")),
        "epoch_loop.val_loop.state_dict": {},
        "epoch_loop.val_loop.batch_progress": {
            **_progress(0, 0, ("ready", "started", "processed", "completed")),
            "is_last_batch": False,
        },  # fmt: skip
        "epoch_progress": epoch,
    }


def _member_optimizer_state(trainer: PackTrainer, k: int) -> dict[str, Any]:
    """Member ``k``'s slice of the pack optimiser's state, laid out as its own optimiser's
    (parameters numbered in its SimpleNetwork's order)."""
    slots = trainer.net.member_slots(k)
    names = [name for name, _ in trainer.net.member_templates[k].named_parameters()]
    state = {}
    for i, name in enumerate(names):
        tensor, j = slots[name]
        stacked = trainer.optimizer.state.get(tensor, {})
        state[i] = {key: (v[j].clone() if torch.is_tensor(v) and v.dim() and v.shape[0] == tensor.shape[0] else v)
                    for key, v in stacked.items()}  # fmt: skip
    (group,) = trainer.optimizer.param_groups
    return {"state": state, "param_groups": [{**{k2: v for k2, v in group.items() if k2 != "params"},
                                              "params": list(range(len(names)))}]}  # fmt: skip


def save_member_checkpoint(trainer: PackTrainer, state: _MemberState, name: str) -> Path:
    """Write member ``state``'s checkpoint ``name`` into its run's checkpoints folder."""
    k = state.index
    steps_per_epoch = trainer.global_step // max(1, trainer.epoch + 1)
    checkpoint = {
        "epoch": trainer.epoch,
        "global_step": trainer.global_step,
        "pytorch-lightning_version": lightning.__version__,
        "state_dict": {f"net.{key}": value.cpu() for key, value in trainer.net.member_state_dict(k).items()},
        "loops": {"fit_loop": fit_loop_state(trainer.epoch + 1, trainer.global_step, steps_per_epoch)},
        "callbacks": {
            "RunHistory": {
                "epoch_times": state.epoch_times,
                "diagnostics_times": state.diagnostics_times,
                "history": state.history,
            }
        },  # fmt: skip
        "optimizer_states": [_member_optimizer_state(trainer, k)],
        "lr_schedulers": [trainer.scheduler["scheduler"].state_dict()] if trainer.scheduler else [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"compile": False},
        # read by a pack that resumes; Lightning ignores it
        "actlab_pack": {"generator": state.generator.get_state(), "best_val": state.best_val},
    }
    path = state.member.output_dir / CHECKPOINT_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(path)
    return path
