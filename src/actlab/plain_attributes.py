"""Attributes an nn.Module sets every step, set as the plain attributes they are."""

from __future__ import annotations

from typing import Any


class PlainAttributes:
    """Mixin for an ``nn.Module``: the attributes named in ``plain_attributes`` (set every step)
    are set straight into the instance's ``__dict__``. ``nn.Module.__setattr__`` looks for a
    parameter, a buffer or a module of that name first: ~1 us each, which a training step of a
    tiny model pays many times over."""

    plain_attributes: frozenset[str] = frozenset()

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.plain_attributes:
            self.__dict__[name] = value
        else:
            super().__setattr__(name, value)
