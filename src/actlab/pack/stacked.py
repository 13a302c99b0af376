"""K SimpleNetworks of one shape as one module: stacked Linear weights applied as batched
matrix products, each member's activation applied to its own slice (members side by side with
the same activation config share one call: packs put them next to each other).

Members that stop training can be taken out of the stack (:meth:`StackedNetwork.compact`),
so the computation shrinks with them; their weights wait in a stash until the stack is
expanded back (:meth:`StackedNetwork.expand`), e.g. to test every member.

Batched matrix products sum in another order than one ``F.linear`` per run, so a member's
numbers differ from its single run's in the last float32 bit, a difference training then
grows (more with the learning rate). ``exact=True`` computes each member alone instead, with
its single run's own kernels on tensors of its single run's shapes: bit-identical, at the
price of a Python loop over members (on a GPU, K kernel launches where one batched product
is one)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from actlab.models import SimpleNetwork


def member_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each member's per-sample cross-entropy ``(R, B)`` of its logits ``(R, B, C)`` and targets
    ``(R, B)``. On a CPU computed with the classes as dim 1, ``(R, C, B)``: its log-softmax then
    runs along the batch, in vector registers, where along the last dim it loops over 10 classes
    a sample (a pack of 8's training loss and its backward ~1.7x faster, a validation batch of
    8x1024 ~9x, 64 members ~4x). The same losses as over ``(R*B, C)`` to float32 rounding: its
    exp is vectorised where the other's is partly not (measured: 58 of 498,000 random losses
    differ, by at most 2 ulp; tests/test_pack.py checks the rounding). Other devices keep the
    usual ``(R*B, C)`` layout: the other one is measured on CPUs only."""
    if logits.device.type != "cpu":
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.trainable:
            return self.shared(x)
        params, buffers = self.stacked_state()
        template = self.template[0]
        return vmap(lambda p, b, h: functional_call(template, (p, b), (h,)), randomness="different")(params, buffers, x)

    def member(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The activation of the group's ``i``-th member alone, on its own ``(batch, width)``
        tensor: the module call its single run makes (its own parameters, no vmap)."""
        if not self.trainable:
            return self.shared(x)
        params, buffers = self.stacked_state()
        mine = ({k: v[i] for k, v in params.items()}, {k: v[i] for k, v in buffers.items()})
        return functional_call(self.template[0], mine, (x,))


class StackedNetwork(nn.Module):
    """``members`` SimpleNetworks of one hidden shape as one module.

    Input ``(height, batch, ...)``, output ``(height, batch, classes)``, one row per member in
    the stack (``present``; all of them until :meth:`compact`): each sees its own batch and
    its own weights; nothing couples members (the loss of one never reaches another's
    gradients). ``activation_keys[k]`` names member k's activation config: each run of
    consecutive members with the same key is one :class:`ActivationGroup` per layer, applied to
    its slice of the stacked hidden tensor (a view: no gather or scatter of activations).

    Built from the members' own modules (each made from its own seed, exactly as a single
    run makes it), whose values it copies; :meth:`member_state_dict` gives them back in
    SimpleNetwork's layout, for checkpoints and per-member figures.

    ``exact``: each member computed alone, one ``F.linear`` and one activation call per member
    and layer over its own rows (its single run's kernels and shapes; a Python loop over
    members), so its values and gradients are its single run's to the bit; the default batches
    the members' Linear layers (``torch.baddbmm``), equal to the single runs up to float32
    rounding.
    """

    def __init__(self, members: list[SimpleNetwork], activation_keys: list[str], exact: bool = False) -> None:
        super().__init__()
        shapes = {tuple(m.hidden_shape) for m in members}
        if len(shapes) != 1 or any(m.share_activation for m in members):
            raise ValueError("a pack needs members of one hidden shape, each with its own activations per layer")
        if len(activation_keys) != len(members):
            raise ValueError(f"{len(activation_keys)} activation keys for {len(members)} members")
        self.size, self.hidden_shape, self.exact = len(members), list(members[0].hidden_shape), exact
        linears = [[*m.linears, m.head] for m in members]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([layers[i].weight.detach() for layers in linears]).clone())
            for i in range(len(linears[0]))
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([layers[i].bias.detach() for layers in linears]).clone())
            for i in range(len(linears[0]))
        )
        runs: list[list[int]] = []  # runs of consecutive members with one activation key
        for k, key in enumerate(activation_keys):
            if runs and activation_keys[runs[-1][0]] == key:
                runs[-1].append(k)
            else:
                runs.append([k])
        self.all_group_members = runs
        self.group_members = [list(run) for run in runs]  # each group's members in the stack
        self.activations = nn.ModuleList(
            nn.ModuleList(ActivationGroup([members[k].activations[layer] for k in group]) for group in runs)
            for layer in range(len(self.hidden_shape))
        )
        # each member's own layout (on the meta device: no memory), for member_network; a plain
        # list, so they are not submodules
        self.member_templates = [copy.deepcopy(m).to("meta") for m in members]
        self.present = list(range(self.size))  # the members in the stack, one row each, ascending
        self.stash: dict[int, dict[str, torch.Tensor]] = {}  # the weights of the members taken out

    @property
    def depth(self) -> int:
        return len(self.hidden_shape)

    @property
    def height(self) -> int:
        """How many members the stack holds (computes) now."""
        return len(self.present)

    def row(self, k: int) -> int:
        """Member k's row in the stack (a ValueError once it is taken out)."""
        return self.present.index(k)

    def _activate(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        groups = self.activations[layer]
        slices, start = [], 0
        for group, members_of in zip(groups, self.group_members):
            if members_of:
                slices.append((group, start, start + len(members_of)))
                start += len(members_of)
        if len(slices) == 1:
            return slices[0][0](h)
        return torch.cat([group(h[first:end]) for group, first, end in slices])  # one copy of the layer's output

    def _linear(self, i: int, h: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.biases[i].unsqueeze(1), h, self.weights[i].transpose(1, 2))

    def _each_member(self, x: torch.Tensor, layers: int, head: bool) -> list[torch.Tensor]:
        """Exact mode: every member's first ``layers`` hidden layers, computed alone over its own
        rows as its single run computes them, stacked only at the end: their outputs, or (``head``)
        the logits alone."""
        weights = [w.unbind(0) for w in self.weights]
        biases = [b.unbind(0) for b in self.biases]
        groups = [(g, i) for g, members_of in enumerate(self.group_members) for i in range(len(members_of))]
        hidden: list[list[torch.Tensor]] = [[] for _ in range(layers)]
        logits = []
        for row, (h, (g, i)) in enumerate(zip(x.flatten(2).unbind(0), groups)):
            for layer in range(layers):
                h = self.activations[layer][g].member(i, F.linear(h, weights[layer][row], biases[layer][row]))
                if not head:
                    hidden[layer].append(h)
            if head:
                logits.append(F.linear(h, weights[-1][row], biases[-1][row]))
        return [torch.stack(logits)] if head else [torch.stack(rows) for rows in hidden]

    def forward_hidden(self, x: torch.Tensor, layers: int | None = None) -> list[torch.Tensor]:
        """Post-activation outputs ``(height, batch, width)`` of the first ``layers`` hidden layers."""
        layers = self.depth if layers is None else layers
        if self.exact:
            return self._each_member(x, layers, head=False)
        h = x.flatten(2)
        outputs = []
        for layer in range(layers):
            h = self._activate(layer, self._linear(layer, h))
            outputs.append(h)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exact:
            return self._each_member(x, self.depth, head=True)[-1]
        hidden = self.forward_hidden(x)
        return self._linear(self.depth, hidden[-1])

    def linear_weights(self) -> list[nn.Parameter]:
        """The stacked ``(height, out, in)`` weights of the hidden layers, then the head."""
        return list(self.weights)

    def parameter_members(self) -> list[tuple[nn.Parameter, list[int]]]:
        """Every stacked parameter with the member each of its dim-0 rows belongs to."""
        members = [(p, list(self.present)) for p in (*self.weights, *self.biases)]
        for groups in self.activations:
            for group, members_of in zip(groups, self.group_members):
                if group.trainable:
                    members += [(p, list(members_of)) for p in group.params.values()]
        return members

    def member_slots(self, k: int) -> dict[str, tuple[torch.Tensor, int | None]]:
        """Where member ``k``'s tensors live in the stack: SimpleNetwork state-dict name ->
        (stacked tensor, index along dim 0), or (the one shared tensor, None) for a
        parameter-free group's buffers."""
        row = self.row(k)
        slots: dict[str, tuple[torch.Tensor, int | None]] = {}
        for i in range(self.depth):
            slots[f"linears.{i}.weight"], slots[f"linears.{i}.bias"] = (self.weights[i], row), (self.biases[i], row)
        slots["head.weight"], slots["head.bias"] = (self.weights[-1], row), (self.biases[-1], row)
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
        """Member ``k``'s weights as a SimpleNetwork state dict (from the stash once taken out)."""
        if k in self.stash:
            return {name: value.clone() for name, value in self.stash[k].items()}
        return {name: (v if j is None else v[j]).detach().clone() for name, (v, j) in self.member_slots(k).items()}

    @torch.no_grad()
    def load_member_state_dict(self, k: int, state_dict: dict[str, torch.Tensor]) -> None:
        """Member ``k``'s weights from a SimpleNetwork state dict (into the stash once taken out)."""
        if k in self.stash:
            self.stash[k] = {name: state_dict[name].detach().cpu().clone() for name in self.stash[k]}
            return
        for name, (tensor, j) in self.member_slots(k).items():
            if j is not None:
                tensor[j] = state_dict[name].to(tensor.device)

    def member_network(self, k: int) -> SimpleNetwork:
        """Member ``k`` as a SimpleNetwork of its own (a copy, on this module's device)."""
        net = copy.deepcopy(self.member_templates[k]).to_empty(device=self.weights[0].device)
        net.load_state_dict(self.member_state_dict(k))
        return net

    def _stacked_tensors(self, full: bool = False) -> list[tuple[torch.Tensor, list[int]]]:
        """Every tensor stacked per member (parameters and trainable groups' buffers), with the
        member of each row: as the stack is now, or (``full``) as it is with every member in it."""
        rows = list(range(self.size)) if full else list(self.present)
        tensors: list[tuple[torch.Tensor, list[int]]] = [(p, rows) for p in (*self.weights, *self.biases)]
        for groups in self.activations:
            for group, members_of in zip(groups, self.all_group_members if full else self.group_members):
                if group.trainable:
                    params, buffers = group.stacked_state()
                    tensors += [(v, list(members_of)) for v in (*params.values(), *buffers.values())]
        return tensors

    @torch.no_grad()
    def compact(self, keep: list[int]) -> dict[int, torch.Tensor]:
        """Take every member not in ``keep`` out of the stack (its weights into the stash);
        the stacked tensors keep their identity (their ``.data`` shrinks). Returns, per
        stacked tensor (by ``id``), the rows of its old stack that remain."""
        keep = [k for k in self.present if k in set(keep)]
        for k in self.present:
            if k not in keep:
                self.stash[k] = {name: value.cpu() for name, value in self.member_state_dict(k).items()}
        kept = {}
        for tensor, members in self._stacked_tensors():
            rows = torch.tensor([j for j, k in enumerate(members) if k in keep], dtype=torch.long)
            tensor.data = tensor.data.index_select(0, rows.to(tensor.device))
            tensor.grad = None  # of the old shape; the next backward makes it anew
            kept[id(tensor)] = rows
        self.group_members = [[k for k in members_of if k in keep] for members_of in self.group_members]
        self.present = keep
        return kept

    @torch.no_grad()
    def expand(self) -> None:
        """Put every member taken out back into the stack, with its stashed weights."""
        if not self.stash:
            return
        states = {k: self.member_state_dict(k) for k in range(self.size)}
        full = {id(t): len(members) for t, members in self._stacked_tensors(full=True)}
        for tensor, _ in self._stacked_tensors():
            tensor.data = tensor.data.new_empty((full[id(tensor)], *tensor.shape[1:]))
            tensor.grad = None
        self.group_members = [list(run) for run in self.all_group_members]
        self.present, self.stash = list(range(self.size)), {}
        for k, state in states.items():
            for name, (tensor, j) in self.member_slots(k).items():
                if j is not None:
                    tensor[j] = state[name].to(tensor.device)
