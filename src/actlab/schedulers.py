"""Learning-rate schedules (the ``scheduler`` config group): each a function of the optimiser
and the run's length returning Lightning's lr-scheduler dict, with an optional linear warm-up.

All but ``plateau`` depend only on the step count, so every run (and every member of a pack)
sees the same learning rate at the same epoch.
"""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer, lr_scheduler


def _with_warmup(optimizer: Optimizer, main: lr_scheduler.LRScheduler, warmup: int,
                 interval: str) -> dict[str, Any]:  # fmt: skip
    if warmup > 0:
        ramp = lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), total_iters=warmup)
        main = lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
    return {"scheduler": main, "interval": interval}


def cosine(optimizer: Optimizer, epochs: int, steps_per_epoch: int, eta_min: float = 0.0,
           warmup_epochs: int = 0) -> dict[str, Any]:  # fmt: skip
    """Cosine annealing from the optimiser's lr to ``eta_min`` over the run (per epoch)."""
    main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs - warmup_epochs), eta_min=eta_min)
    return _with_warmup(optimizer, main, warmup_epochs, "epoch")


def step(optimizer: Optimizer, epochs: int, steps_per_epoch: int, step_size: int = 5, gamma: float = 0.5,
         warmup_epochs: int = 0) -> dict[str, Any]:  # fmt: skip
    """Multiply the lr by ``gamma`` every ``step_size`` epochs."""
    return _with_warmup(optimizer, lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma), warmup_epochs,
                        "epoch")  # fmt: skip


def plateau(optimizer: Optimizer, epochs: int, steps_per_epoch: int, monitor: str = "val/loss", factor: float = 0.5,
            patience: int = 2, warmup_epochs: int = 0) -> dict[str, Any]:  # fmt: skip
    """Multiply the lr by ``factor`` once ``monitor`` has not improved for ``patience`` epochs."""
    if warmup_epochs:
        raise ValueError("scheduler=plateau has no warm-up; set scheduler.warmup_epochs=0")
    mode = "min" if "loss" in monitor else "max"
    main = lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience)
    return {"scheduler": main, "interval": "epoch", "monitor": monitor}


def onecycle(optimizer: Optimizer, epochs: int, steps_per_epoch: int, max_lr_factor: float = 10.0,
             pct_start: float = 0.3, warmup_epochs: int = 0) -> dict[str, Any]:  # fmt: skip
    """One-cycle policy per step: up to ``max_lr_factor`` x the optimiser's lr, then down."""
    if warmup_epochs:
        raise ValueError("scheduler=onecycle warms up by itself (pct_start); set scheduler.warmup_epochs=0")
    max_lr = [group["lr"] * max_lr_factor for group in optimizer.param_groups]
    main = lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                   pct_start=pct_start)  # fmt: skip
    return {"scheduler": main, "interval": "step"}
