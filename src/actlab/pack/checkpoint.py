"""A pack's checkpoints are its members' own: Lightning's checkpoint of the pack, split into
one checkpoint per member in the format of a single run's (``python train.py <its
overrides> resume=true`` continues from it), and joined back to resume a pack.

Splitting happens where Lightning writes (a CheckpointIO plugin), so every checkpoint the
Trainer takes — the members' ModelCheckpoints at epoch ends, Lightning's own — carries the
real loop, optimiser, scheduler and callback states; nothing is forged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins import TorchCheckpointIO

from actlab.classifier import EPOCH_SUMS_KEY
from actlab.errors import ConfigError
from actlab.pack.callbacks import MEMBER_CALLBACK_CLASSES, MemberCallbacks
from actlab.pack.module import MEMBER_SUFFIX, PACK_STACK_KEY, PackModule, member_key, member_prefix

PACK_DATA_KEY = "PackDataModule"
# the single-run callbacks a pack keeps once per member: the start of their state keys
MEMBER_STATE_PREFIXES = tuple(c.single_run_class.__qualname__ for c in MEMBER_CALLBACK_CLASSES)
# where a pack's checkpoint holds them: the state of its MemberCallbacks
MEMBERS_KEY = MemberCallbacks.__qualname__
# what a single run's Classifier saves as its hyper-parameters
CLASSIFIER_HPARAMS = {"hparams_name": "kwargs", "hyper_parameters": {"compile": False}}


def _strip_prefix(value: Any, k: int) -> Any:
    if isinstance(value, str) and value.startswith(member_prefix(k)):
        return value[len(member_prefix(k)) :]
    if isinstance(value, dict):
        return {key: _strip_prefix(v, k) for key, v in value.items()}
    return value


def _member_callbacks(callbacks: dict[str, Any], k: int) -> dict[str, Any]:
    """Member k's callback states under its single run's keys, and the shared ones."""
    mine = {key: state for key, state in callbacks.items() if key != MEMBERS_KEY}
    for key, state in callbacks.get(MEMBERS_KEY, {}).items():
        base, _, owner = key.rpartition(MEMBER_SUFFIX)
        if int(owner) == k:
            mine[base] = _strip_prefix(state, k)
    return mine


def _member_tensors(module: PackModule, k: int) -> list[tuple[int, int]]:
    """For each parameter of member k's SimpleNetwork (in its own order): where its optimiser
    state lives in the pack's optimiser, as (index among the tensors of member k's parameter
    group, row along dim 0 of that tensor)."""
    index = {id(p): i for i, p in enumerate(module.parameters())}
    tensors = module.optimizer_layout()[module.group_of(k)]
    place = {i: (n, first) for n, (i, first, _) in enumerate(tensors)}
    slots = module.net.member_slots(k)
    names = [name for name, _ in module.net.member_templates[k].named_parameters()]
    found = []
    for name in names:
        n, first = place[index[id(slots[name][0])]]
        found.append((n, slots[name][1] - first))
    return found


def _group_offsets(module: PackModule) -> list[int]:
    """Where each parameter group's tensors start in the optimiser's flat state numbering."""
    offsets, total = [], 0
    for tensors in module.optimizer_layout():
        offsets.append(total)
        total += len(tensors)
    return offsets


def _member_optimizer_state(state: dict[str, Any], module: PackModule, k: int) -> dict[str, Any]:
    """Member k's slice of the pack optimiser's state dict, laid out as its own optimiser's."""
    g = module.group_of(k)
    offset, tensors = _group_offsets(module)[g], module.optimizer_layout()[g]
    mine = {}
    for m, (n, row) in enumerate(_member_tensors(module, k)):
        rows = tensors[n][2] - tensors[n][1]
        mine[m] = {key: (v[row].clone() if torch.is_tensor(v) and v.dim() and v.shape[0] == rows else v)
                   for key, v in state["state"].get(offset + n, {}).items()}  # fmt: skip
    return {"state": mine, "param_groups": [{**state["param_groups"][g], "params": list(range(len(mine)))}]}


# a learning-rate scheduler's state entries that hold one value per parameter group
PER_GROUP_SCHEDULER_KEYS = ("base_lrs", "_last_lr")


def _member_scheduler_state(state: dict[str, Any], g: int) -> dict[str, Any]:
    """A scheduler's state as it holds group g's values only (a single run has one group)."""
    mine = {key: ([value[g]] if key in PER_GROUP_SCHEDULER_KEYS else value) for key, value in state.items()}
    if "_schedulers" in state:  # SequentialLR (warm-up): its schedulers' states
        mine["_schedulers"] = [_member_scheduler_state(inner, g) for inner in state["_schedulers"]]
    return mine


def _pack_scheduler_state(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The inverse of :func:`_member_scheduler_state`: one member's state per group."""
    joined = {key: ([s[key][0] for s in states] if key in PER_GROUP_SCHEDULER_KEYS else value)
              for key, value in states[0].items()}  # fmt: skip
    if "_schedulers" in joined:
        inners = zip(*(s["_schedulers"] for s in states))
        joined["_schedulers"] = [_pack_scheduler_state(list(inner)) for inner in inners]
    return joined


def member_checkpoint(checkpoint: dict[str, Any], module: PackModule, k: int, data_key: str) -> dict[str, Any]:
    """Member k's checkpoint, as its single run would have saved it at the same moment."""
    member = {key: value for key, value in checkpoint.items()
              if key not in ("state_dict", "optimizer_states", "callbacks", PACK_DATA_KEY, PACK_STACK_KEY)}  # fmt: skip
    member["state_dict"] = {name: value.detach().cpu().clone() for name, value in module.member_state_dict(k).items()}
    member["optimizer_states"] = [_member_optimizer_state(s, module, k) for s in checkpoint.get("optimizer_states", [])]
    if "lr_schedulers" in checkpoint:
        member["lr_schedulers"] = [_member_scheduler_state(s, module.group_of(k)) for s in checkpoint["lr_schedulers"]]
    member["callbacks"] = _member_callbacks(checkpoint.get("callbacks", {}), k)
    if PACK_DATA_KEY in checkpoint:
        member[data_key] = {"shuffle_generator": checkpoint[PACK_DATA_KEY]["shuffle_generators"][k]}
    if EPOCH_SUMS_KEY in checkpoint:  # member k's row of the training epoch's sums
        sums = checkpoint[EPOCH_SUMS_KEY]
        member[EPOCH_SUMS_KEY] = {**sums, **{key: sums[key][k : k + 1] for key in ("loss_sum", "correct")}}
    member.update(CLASSIFIER_HPARAMS)
    return member


def save_atomically(checkpoint: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(path)


class PackCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer for a pack: a checkpoint saved into member k's run
    directory (by its ModelCheckpoints) is written as member k's own checkpoint; any other
    (Lightning's own, e.g. on SLURM preemption) as the whole pack's."""

    def __init__(self, module: PackModule, member_dirs: list[Path], data_key: str) -> None:
        super().__init__()
        self.module, self.data_key = module, data_key
        self.member_dirs = [Path(d).resolve() for d in member_dirs]
        self._members = {d: k for k, d in reversed(list(enumerate(self.member_dirs)))}  # the first of equal dirs

    def _member_of(self, path: Path) -> int | None:
        """The member whose run directory holds ``path`` (None: none's)."""
        path = Path(path).resolve()
        return next((self._members[d] for d in (path, *path.parents) if d in self._members), None)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        k = self._member_of(path)
        if k is None:
            save_atomically(checkpoint, Path(path))
        else:
            save_atomically(member_checkpoint(checkpoint, self.module, k, self.data_key), Path(path))


def stopped_early(checkpoint: dict[str, Any]) -> bool:
    """Whether a single run's checkpoint says its early stopping (or a pack's rate halving) had ended it."""
    return any(key.startswith("EarlyStopping") and (state.get("stopped_epoch") or state.get("halved_epoch") is not None)
               for key, state in checkpoint.get("callbacks", {}).items())  # fmt: skip


def pack_checkpoint(checkpoints: list[dict[str, Any]], module: PackModule, data_key: str) -> tuple[dict, list[int]]:
    """The pack's checkpoint joined from its members' (the inverse of :func:`member_checkpoint`),
    and the members that had stopped early before it. The members still training must be at
    one epoch and step."""
    stopped = [k for k, c in enumerate(checkpoints) if stopped_early(c)]
    live = [k for k in range(len(checkpoints)) if k not in stopped]
    progress = {(checkpoints[k]["epoch"], checkpoints[k]["global_step"]) for k in live}
    if len(progress) > 1:
        raise ConfigError(f"pack members resume from different epochs and steps {sorted(progress)}: "
                          "they cannot resume as one pack")  # fmt: skip
    reference = checkpoints[live[0] if live else 0]
    joined = {key: value for key, value in reference.items()
              if key not in ("state_dict", "optimizer_states", "callbacks", data_key, EPOCH_SUMS_KEY,
                             *CLASSIFIER_HPARAMS)}  # fmt: skip
    for k, checkpoint in enumerate(checkpoints):
        module.load_member_weights(k, checkpoint["state_dict"])
    joined["state_dict"] = {name: value.detach().clone() for name, value in module.state_dict().items()}
    joined["optimizer_states"] = [_pack_optimizer_state(checkpoints, module)]
    if "lr_schedulers" in reference:
        firsts = [checkpoints[start] for start, _ in module.runs]  # each group's settings: its first member's
        joined["lr_schedulers"] = [_pack_scheduler_state(list(states)) for states in
                                   zip(*(c["lr_schedulers"] for c in firsts))]  # fmt: skip
    shared = {key: state for key, state in reference["callbacks"].items() if not key.startswith(MEMBER_STATE_PREFIXES)}
    mine = {member_key(key, k): state for k, checkpoint in enumerate(checkpoints)
            for key, state in checkpoint["callbacks"].items() if key.startswith(MEMBER_STATE_PREFIXES)}  # fmt: skip
    joined["callbacks"] = {**shared, MEMBERS_KEY: mine}
    joined[PACK_DATA_KEY] = {"shuffle_generators": [c[data_key]["shuffle_generator"] for c in checkpoints]}
    if all(EPOCH_SUMS_KEY in c for c in checkpoints):  # the members resume at one point: one count
        sums = [c[EPOCH_SUMS_KEY] for c in checkpoints]
        joined[EPOCH_SUMS_KEY] = {"loss_sum": torch.cat([s["loss_sum"] for s in sums]),
                                  "correct": torch.cat([s["correct"] for s in sums]),
                                  "count": reference[EPOCH_SUMS_KEY]["count"]}  # fmt: skip
    return joined, stopped


def _pack_optimizer_state(checkpoints: list[dict[str, Any]], module: PackModule) -> dict[str, Any]:
    """The pack optimiser's state dict from its members' (the inverse of :func:`_member_optimizer_state`)."""
    parameters, layout, offsets = list(module.parameters()), module.optimizer_layout(), _group_offsets(module)
    state: dict[int, dict[str, Any]] = {}
    for k, checkpoint in enumerate(checkpoints):
        (member,) = checkpoint["optimizer_states"]
        g = module.group_of(k)
        for m, (n, row) in enumerate(_member_tensors(module, k)):
            i, first, end = layout[g][n]
            target = state.setdefault(offsets[g] + n, {})
            for key, value in member["state"].get(m, {}).items():
                if torch.is_tensor(value) and value.dim():
                    shape = (end - first, *parameters[i].shape[1:])
                    target.setdefault(key, torch.zeros(shape, dtype=value.dtype))[row] = value
                else:
                    target[key] = value
    groups = []
    for g, (start, _) in enumerate(module.runs):
        group = {key: value for key, value in checkpoints[start]["optimizer_states"][0]["param_groups"][0].items()
                 if key != "params"}  # fmt: skip
        groups.append({**group, "params": list(range(offsets[g], offsets[g] + len(layout[g])))})
    return {"state": state, "param_groups": groups}
