"""K SimpleNetworks of one shape as one module: stacked Linear weights applied as batched
matrix products, each member's activation applied to its own slice (members side by side with
the same activation config share one call: packs put them next to each other)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from actlab.models import SimpleNetwork


class ActivationGroup(nn.Module):
    """The activations of one layer for a run of consecutive members with one activation config.

    Parameter-free activations are elementwise, so one module applies to the whole
    ``(members, batch, width)`` slice at once (RReLU's training noise then comes from one draw
    for the group). Trainable ones keep one parameter set per member, stacked along dim 0,
    and run under ``torch.func.vmap``.
    """

    def __init__(self, activations: list[nn.Module]) -> None:
        super().__init__()
        first = activations[0]
        self.trainable = any(True for _ in first.parameters())
        if not self.trainable:
            self.shared = first
            return
        params, buffers = stack_module_state(activations)
        self.params = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(v) for k, v in params.items()})
        for name, value in buffers.items():
            self.register_buffer(f"buffer__{name.replace('.', '__')}", value)
        self.template = [copy.deepcopy(first).to("meta")]  # a list: not a submodule, no parameters of its own

    def stacked_state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        params = {k.replace("__", "."): v for k, v in self.params.items()}
        buffers = {k[len("buffer__") :].replace("__", "."): v for k, v in self.named_buffers() if "." not in k}
        return params, buffers

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``(members, batch, width)``, the group's members in order, or (``rows``) those
        of its members whose places in the group's stack ``rows`` gives."""
        if not self.trainable:
            return self.shared(x)
        params, buffers = self.stacked_state()
        if rows is not None:
            params = {k: v.index_select(0, rows) for k, v in params.items()}
            buffers = {k: v.index_select(0, rows) for k, v in buffers.items()}
        template = self.template[0]
        return vmap(lambda p, b, h: functional_call(template, (p, b), (h,)), randomness="different")(params, buffers, x)


@dataclass
class Selection:
    """Some members of a StackedNetwork, computed without the others (a compacted pack).

    ``members``: their indices, ascending; ``groups``: per activation group with a selected
    member, in order, (its index, how many of its members are selected, their places in the
    group's stack)."""

    members: torch.Tensor
    groups: list[tuple[int, int, torch.Tensor]]

    def __len__(self) -> int:
        return len(self.members)


class StackedNetwork(nn.Module):
    """``members`` SimpleNetworks of one hidden shape as one module.

    Input ``(K, batch, ...)``, output ``(K, batch, classes)``: member k sees its own batch and
    its own weights; nothing couples members (the loss of one never reaches another's
    gradients). ``activation_keys[k]`` names member k's activation config: each run of
    consecutive members with the same key is one :class:`ActivationGroup` per layer, applied to
    its slice of the stacked hidden tensor (a view: no gather or scatter of activations).

    Built from the members' own modules (each made from its own seed, exactly as a single
    run makes it), whose values it copies; :meth:`member_state_dict` gives them back in
    SimpleNetwork's layout, for checkpoints and per-member figures.
    """

    def __init__(self, members: list[SimpleNetwork], activation_keys: list[str]) -> None:
        super().__init__()
        shapes = {tuple(m.hidden_shape) for m in members}
        if len(shapes) != 1 or any(m.share_activation for m in members):
            raise ValueError("a pack needs members of one hidden shape, each with its own activations per layer")
        if len(activation_keys) != len(members):
            raise ValueError(f"{len(activation_keys)} activation keys for {len(members)} members")
        self.size, self.hidden_shape = len(members), list(members[0].hidden_shape)
        linears = [[*m.linears, m.head] for m in members]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([layers[i].weight.detach() for layers in linears]).clone())
            for i in range(len(linears[0]))
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([layers[i].bias.detach() for layers in linears]).clone())
            for i in range(len(linears[0]))
        )
        self.group_members: list[list[int]] = []  # runs of consecutive members with one activation key
        for k, key in enumerate(activation_keys):
            if self.group_members and activation_keys[self.group_members[-1][0]] == key:
                self.group_members[-1].append(k)
            else:
                self.group_members.append([k])
        self.activations = nn.ModuleList(
            nn.ModuleList(
                ActivationGroup([members[k].activations[layer] for k in group]) for group in self.group_members
            )
            for layer in range(len(self.hidden_shape))
        )
        # each member's own layout (on the meta device: no memory), for member_network; a plain
        # list, so they are not submodules
        self.member_templates = [copy.deepcopy(m).to("meta") for m in members]

    @property
    def depth(self) -> int:
        return len(self.hidden_shape)

    def selection(self, members: Sequence[int]) -> Selection:
        """The members ``members`` (ascending) as a :class:`Selection` for :meth:`forward`."""
        device = self.weights[0].device
        chosen = set(members)
        groups = []
        for g, members_of in enumerate(self.group_members):
            rows = [j for j, k in enumerate(members_of) if k in chosen]
            if rows:
                groups.append((g, len(rows), torch.tensor(rows, device=device)))
        return Selection(torch.tensor(sorted(chosen), device=device), groups)

    def _activate(self, layer: int, h: torch.Tensor, selection: Selection | None = None) -> torch.Tensor:
        groups = self.activations[layer]
        if selection is not None:
            outputs, start = [], 0
            for g, count, rows in selection.groups:
                outputs.append(groups[g](h[start : start + count], rows))
                start += count
            return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        if len(groups) == 1:
            return groups[0](h)
        runs = zip(groups, self.group_members)
        outputs = [group(h[members_of[0] : members_of[-1] + 1]) for group, members_of in runs]
        return torch.cat(outputs)  # one copy of the layer's output

    def _linear(self, i: int, h: torch.Tensor, selection: Selection | None = None) -> torch.Tensor:
        weight, bias = self.weights[i], self.biases[i]
        if selection is not None:
            weight, bias = weight.index_select(0, selection.members), bias.index_select(0, selection.members)
        return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))

    def forward_hidden(self, x: torch.Tensor, layers: int | None = None,
                       selection: Selection | None = None) -> list[torch.Tensor]:  # fmt: skip
        """Post-activation outputs ``(K, batch, width)`` of the first ``layers`` hidden layers
        (of the selected members only, in their order, with ``selection``)."""
        h = x.flatten(2)
        outputs = []
        for layer in range(self.depth if layers is None else layers):
            h = self._activate(layer, self._linear(layer, h, selection), selection)
            outputs.append(h)
        return outputs

    def forward(self, x: torch.Tensor, selection: Selection | None = None) -> torch.Tensor:
        """Logits ``(K, batch, classes)`` from inputs ``(K, batch, ...)``; with ``selection``,
        of its members only, from theirs (``(len(selection), batch, ...)``)."""
        hidden = self.forward_hidden(x, selection=selection)
        return self._linear(self.depth, hidden[-1], selection)

    def parameter_members(self) -> list[tuple[nn.Parameter, list[int]]]:
        """Every stacked parameter with the member each of its dim-0 rows belongs to."""
        members = [(p, list(range(self.size))) for p in (*self.weights, *self.biases)]
        for groups in self.activations:
            for group, members_of in zip(groups, self.group_members):
                if group.trainable:
                    members += [(p, list(members_of)) for p in group.params.values()]
        return members

    def linear_weights(self) -> list[nn.Parameter]:
        """The stacked ``(K, out, in)`` weights of the hidden layers, then the head."""
        return list(self.weights)

    def member_slots(self, k: int) -> dict[str, tuple[torch.Tensor, int | None]]:
        """Where member ``k``'s tensors live: SimpleNetwork state-dict name -> (stacked tensor,
        index along dim 0), or (the one shared tensor, None) for a parameter-free group's buffers."""
        slots: dict[str, tuple[torch.Tensor, int | None]] = {}
        for i in range(self.depth):
            slots[f"linears.{i}.weight"], slots[f"linears.{i}.bias"] = (self.weights[i], k), (self.biases[i], k)
        slots["head.weight"], slots["head.bias"] = (self.weights[-1], k), (self.biases[-1], k)
        for layer, groups in enumerate(self.activations):
            for group, members_of in zip(groups, self.group_members):
                if k not in members_of:
                    continue
                if not group.trainable:
                    slots.update({f"activations.{layer}.{n}": (v, None) for n, v in group.shared.state_dict().items()})
                    continue
                params, buffers = group.stacked_state()
                j = members_of.index(k)
                slots.update({f"activations.{layer}.{n}": (v, j) for n, v in {**params, **buffers}.items()})
        return slots

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member ``k``'s weights as a SimpleNetwork state dict."""
        return {name: (v if j is None else v[j]).detach().clone() for name, (v, j) in self.member_slots(k).items()}

    def member_network(self, k: int) -> SimpleNetwork:
        """Member ``k`` as a SimpleNetwork of its own (a copy, on this module's device)."""
        net = copy.deepcopy(self.member_templates[k]).to_empty(device=self.weights[0].device)
        net.load_state_dict(self.member_state_dict(k))
        return net
