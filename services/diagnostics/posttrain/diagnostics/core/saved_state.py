"""A rule's saved state, declared once. A class lists the attributes it saves (``saved``, one
``Saved`` each: the key, how the value is read back, how it is written); ``SavedState`` turns
that list into ``to_dict`` and ``restore``, so that no rule writes its own pair of them. A state
saved by an older version of a rule is brought up to date by its one hook, ``upcast``.

Sizes (a window's, a deque's ``maxlen``) are read from the owner at restore time
((``"cfg.window"``)): a changed configuration keeps what fits, as the windows do.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from posttrain.diagnostics.core.windows import EmaStats, JsonDict, RollingMedian, RollingWindow

# (the saved value, None when missing; the object being restored) -> the attribute's value
Load = Callable[[Any, Any], Any]
Dump = Callable[[Any], Any]


def _same(value: Any, _owner: Any = None) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class Saved:
    """One saved attribute, under its own name. ``part``: the attribute is a ``SavedState``
    whose own keys share the owner's dict."""

    name: str
    load: Load = _same
    dump: Dump = _same
    part: bool = False


class SavedState:
    """``to_dict`` and ``restore`` from the class's ``saved``."""

    __slots__ = ()

    saved: ClassVar[tuple[Saved, ...]] = ()

    @classmethod
    def upcast(cls, state: JsonDict) -> JsonDict:
        """A state saved by an older version of the class, as this one saves it."""
        return state

    def restore(self, state: JsonDict) -> None:
        """Set every saved attribute from ``state`` (a missing key: the attribute's default)."""
        state = self.upcast(state)
        for field in self.saved:
            if field.part:
                part: SavedState = getattr(self, field.name)
                part.restore(state)
            else:
                setattr(self, field.name, field.load(state.get(field.name), self))

    def to_dict(self) -> JsonDict:
        """The saved attributes, JSON-able."""
        out: JsonDict = {}
        for field in self.saved:
            if field.part:
                part: SavedState = getattr(self, field.name)
                out.update(part.to_dict())
            else:
                out[field.name] = field.dump(getattr(self, field.name))
        return out


def part(name: str) -> Saved:
    """A ``SavedState`` attribute whose keys sit beside the owner's."""
    return Saved(name, part=True)


def flag(key: str) -> Saved:
    """A bool, False when missing."""
    return Saved(key, lambda v, _: bool(v))


def count(key: str) -> Saved:
    """An int, 0 when missing."""
    return Saved(key, lambda v, _: 0 if v is None else int(v))


def number(key: str) -> Saved:
    """A float, 0.0 when missing."""
    return Saved(key, lambda v, _: 0.0 if v is None else float(v))


def optional_number(key: str) -> Saved:
    """A float or None."""
    return Saved(key, lambda v, _: None if v is None else float(v))


def optional_count(key: str) -> Saved:
    """An int or None."""
    return Saved(key, lambda v, _: None if v is None else int(v))


def names(key: str) -> Saved:
    """A list of str, empty when missing."""
    return Saved(key, lambda v, _: [str(n) for n in v or ()], list)


def numbers_by_name(key: str) -> Saved:
    """A dict of str to float, empty when missing."""
    return Saved(key, lambda v, _: {k: float(x) for k, x in (v or {}).items()}, dict)


def floats(key: str, maxlen: str) -> Saved:
    """A deque of floats of at most the owner's ``maxlen`` (an attribute path)."""
    size = operator.attrgetter(maxlen)
    return Saved(key, lambda v, owner: deque((float(x) for x in v or ()), size(owner)), list)


def _steps(value: Any, maxlen: int) -> deque[tuple[int, float | None]]:
    pairs = ((int(s), None if x is None else float(x)) for s, x in value or ())
    return deque(pairs, maxlen)


def steps(key: str, maxlen: str) -> Saved:
    """A deque of (step, value or None) pairs of at most the owner's ``maxlen``, saved as
    two-element lists."""
    size = operator.attrgetter(maxlen)
    return Saved(key, lambda v, owner: _steps(v, size(owner)), lambda d: [[s, x] for s, x in d])


def _sized(key: str, size: str, load: Callable[[JsonDict, Any], Any], dump: Dump) -> Saved:
    """A value restored by ``load(saved dict, the owner's size)`` and saved by ``dump``."""
    get = operator.attrgetter(size)
    return Saved(key, lambda v, owner: load(v or {}, get(owner)), dump)


def window(key: str, size: str) -> Saved:
    """A ``RollingWindow`` of the owner's ``size``."""
    return _sized(key, size, RollingWindow.from_dict, RollingWindow.to_dict)


def median(key: str, size: str) -> Saved:
    """A ``RollingMedian`` of the owner's ``size``."""
    return _sized(key, size, RollingMedian.from_dict, RollingMedian.to_dict)


def ema(key: str, alpha: str) -> Saved:
    """An ``EmaStats`` of the owner's ``alpha``."""
    return _sized(key, alpha, EmaStats.from_dict, EmaStats.to_dict)
