"""A fast writer of the hottest message: ``MetricsReported`` from inside a training process.

The reporter behind ``create_training_callback`` writes every step a training loop reports, on a
thread that shares the interpreter lock with that loop. Building each ``MetricPoint`` (pydantic
validation) and writing the message with ``model_dump_json`` cost about 6 us a point, most of the
reporter's work. Here a point is a plain dict of the values the model would hold, and the whole
message is written by orjson in one call (about 1 us a point).

The writer is only ever a faster way to the same message: ``decode`` reads what it writes as the
model writes it (``tests/unit/test_writers.py`` holds the two together over generated points).
Non-finite floats are written as the model writes them (``nonfinite``), never as orjson's
null: a NaN loss must never become a missing loss. ``point_document`` takes only the
plain kinds of values; for anything else it returns None and the caller builds the model, which
judges the value (and refuses it, or reads it as pydantic does).

The reporter's usual step (an int step, float times, every value a finite float) has a faster
way still: ``step_points`` writes a run of such steps from their logged names at once, without
a dict per point (``step_document`` is the same for one step), and answers None for a run
holding any other step, which then goes the way above.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import orjson

from posttrain.events.aliases import name_plan
from posttrain.events.codec import KafkaHeaders, encode_written
from posttrain.events.messages import CORE_FIELDS, MetricsReported
from posttrain.events.nonfinite import as_text, non_finite_text

_CORE = frozenset(CORE_FIELDS)
_FLOAT_ONLY = frozenset({float})
_INT_ONLY = frozenset({int})
# Values orjson writes as the model does (a float only when finite).
_JSON_SCALARS = frozenset({float, int, str, bool, type(None)})
_NUMBERS = frozenset({float, int})


def point_document(
    step: Any,
    epoch: Any,
    timestamp: Any,
    canonical: Mapping[str, float],
    custom: Mapping[str, Any],
) -> dict[str, Any] | None:
    """A ``MetricPoint``'s JSON document, or None when a value is not of a plain kind (a step
    that is not an int, a canonical value that is not a float, a name that is no field).

    ``custom`` holds JSON values (``None``, bool, int, float, str, lists and dicts of them)."""
    if type(step) is not int or type(timestamp) is not float:
        return None
    if epoch is not None:
        if type(epoch) is int:
            epoch = float(epoch)
        elif type(epoch) is not float:
            return None
        elif epoch - epoch != 0.0:
            epoch = non_finite_text(epoch)
    if timestamp - timestamp != 0.0:
        timestamp = non_finite_text(timestamp)
    if not _CORE.issuperset(canonical):
        return None
    document: dict[str, Any] = {"step": step, "epoch": epoch, "timestamp": timestamp}
    document.update(canonical)
    # Every step of a training loop comes here: the common case (all floats, all finite) is
    # told by a few calls that loop in C; a float sum is finite only if every term is.
    values = canonical.values()
    if not _FLOAT_ONLY.issuperset(map(type, values)):
        return None
    total = sum(values)
    if total - total != 0.0:
        for name, value in canonical.items():
            if value - value != 0.0:
                document[name] = non_finite_text(value)
    document["custom"] = custom if _plain_finite(custom.values()) else as_text(dict(custom))
    return document


class _Layout(NamedTuple):
    """Where the values of a step that logs a given tuple of names go."""

    canonical: tuple[str, ...]  # the fields fed, in the order ``canonical_values`` gives them
    canonical_values: Callable[[Mapping[str, Any]], tuple[Any, ...]]
    custom: tuple[str, ...]  # the names kept under custom, in ``custom_values``'s order
    custom_values: Callable[[Mapping[str, Any]], tuple[Any, ...]]
    # The canonical, then the custom, from the values logged in the names' order (a logged
    # step's ``values``, ``step_points``).
    values: Callable[[Sequence[Any]], tuple[Any, ...]]
    # A point's JSON object with a ``%b`` for the text of each of step, epoch, timestamp and
    # ``values``, in that order (``step_points``).
    template: bytes


def _picker(names: tuple[Any, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """The values of ``names`` (keys of a mapping, or positions in a sequence), as a tuple, in
    one C call where there are two or more (``itemgetter`` of one key returns the value itself,
    of none is no getter)."""
    if len(names) > 1:
        return operator.itemgetter(*names)
    if names:
        name = names[0]
        return lambda fields: (fields[name],)
    return lambda fields: ()


def _template(canonical: tuple[str, ...], custom: tuple[str, ...]) -> bytes:
    """A point's JSON object with a ``%b`` for every value (names written by orjson, and any
    ``%`` in them doubled for ``bytes % values``)."""

    def member(name: str) -> bytes:
        return orjson.dumps(name).replace(b"%", b"%%") + b":%b"

    head = b",".join(member(name) for name in ("step", "epoch", "timestamp", *canonical))
    return b"{" + head + b',"custom":{' + b",".join(member(name) for name in custom) + b"}}"


# Layouts by the tuple of names logged; None for names the fast path leaves to the general one
# (a nested ``custom``, a name orjson cannot write). Bounded: a loop that logs new names at
# every step only refills it.
_LAYOUTS: dict[tuple[str, ...], _Layout | None] = {}
_MAX_LAYOUTS = 1024
_UNSEEN = object()


def _layout(names: tuple[str, ...]) -> _Layout | None:
    found = _LAYOUTS.get(names, _UNSEEN)
    if found is not _UNSEEN:
        return found  # type: ignore[return-value]
    layout: _Layout | None = None
    if "custom" not in names:
        plan = name_plan(names)
        fields = tuple(field for field, _ in plan.canonical)
        canonical = tuple(name for _, name in plan.canonical)
        try:
            template = _template(fields, plan.custom)
        except TypeError:  # orjson.JSONEncodeError: a name that is not valid text
            template = None
        if template is not None:
            layout = _Layout(
                fields,
                _picker(canonical),
                plan.custom,
                _picker(plan.custom),
                _picker(tuple(map(names.index, (*canonical, *plan.custom)))),
                template,
            )
    if len(_LAYOUTS) >= _MAX_LAYOUTS:
        _LAYOUTS.clear()
    _LAYOUTS[names] = layout
    return layout


_NO_EPOCH = frozenset({float, type(None)})


# A step as the reporter queues it: step, epoch, timestamp, the names logged and their values
# (in the same order). Names and values as two tuples, not a dict: a tuple holding a dict stays
# tracked by the cyclic garbage collector for as long as it lives, and the reporter's queue
# holds thousands of steps at any time in the training process; tuples of plain values are
# untracked by the young collections, before they could fill the old generation (whose full
# collections the training thread would pay for).
LoggedStep = tuple[Any, Any, Any, tuple[str, ...], tuple[Any, ...]]


def logged_step(step: Any, epoch: Any, timestamp: Any, fields: Mapping[str, Any]) -> LoggedStep:
    """A step's values as ``step_points`` takes them."""
    return (step, epoch, timestamp, tuple(fields), tuple(fields.values()))


def step_points(steps: Sequence[LoggedStep]) -> orjson.Fragment | None:
    """The JSON array of the points of ``steps`` (``logged_step``'s), each written as
    ``step_document`` writes it, for steps all of that kind (an int step, float times or no
    epoch, every value a finite float); None when one is not (write them one by one).

    The reporter writes every step a training loop logs, on a thread that shares the
    interpreter lock with that loop: here a step costs a tuple of its values and no dict. Per
    run of steps that log the same names, the values are checked a column at a time, written
    by one ``orjson.dumps`` of them all, and placed into the names' object template by one
    ``bytes % values``: a number's JSON text holds no comma, so splitting the array's text at
    its commas gives each value's."""
    runs: list[tuple[_Layout, list[tuple[Any, ...]]]] = []
    names: tuple[str, ...] | None = None
    pick = _picker(())
    rows: list[tuple[Any, ...]] = []
    for step, epoch, timestamp, logged, values in steps:
        if logged is not names and logged != names:
            names = logged
            layout = _layout(names)
            if layout is None:
                return None
            pick, rows = layout.values, []
            runs.append((layout, rows))
        rows.append((step, epoch, timestamp, *pick(values)))
    texts: list[bytes] = []
    for run_layout, run_rows in runs:
        text = _run_text(run_layout, run_rows)
        if text is None:
            return None
        texts.append(text)
    return orjson.Fragment(b"[" + b",".join(texts) + b"]")


def _run_text(layout: _Layout, rows: list[tuple[Any, ...]]) -> bytes | None:
    width = len(rows[0])
    flat = list(itertools.chain.from_iterable(rows))
    if not _INT_ONLY.issuperset(map(type, flat[0::width])):
        return None
    epochs = flat[1::width]
    if not _NO_EPOCH.issuperset(map(type, epochs)):
        return None
    total = 0.0
    for column in range(2, width):
        values = flat[column::width]
        if not _FLOAT_ONLY.issuperset(map(type, values)):
            return None
        total += sum(values)
    total += sum(filter(None, epochs))  # (None and 0.0 left out: neither changes the verdict)
    # A float sum is finite only if every term is; one that is not may also have overflowed
    # (two steps' timestamps of 9e307: found by hypothesis), so each term says then.
    terms = itertools.chain(filter(None, epochs), *(flat[c::width] for c in range(2, width)))
    if total - total != 0.0 and not all(map(math.isfinite, terms)):
        return None
    try:
        text = orjson.dumps(flat)
    except TypeError:  # orjson.JSONEncodeError: a step beyond 64 bits
        return None
    return b",".join([layout.template] * len(rows)) % tuple(text[1:-1].split(b","))


def step_document(
    step: Any, epoch: Any, timestamp: Any, fields: Mapping[str, Any]
) -> dict[str, Any] | None:
    """``point_document`` of a step's logged names, mapped as ``aliases.canonical_fields`` maps
    them, for the step a training loop logs almost always: an int step, float times (or no
    epoch) and every value a finite float. None for any other step: the caller goes the
    general way (``canonical_fields`` then ``point_document``), which judges every value.

    The names are resolved once per tuple of names, and each step's values are picked, checked
    and placed by a few calls that loop in C: a fifth of the general way's cost."""
    layout = _layout(tuple(fields))
    if layout is None or type(step) is not int or type(timestamp) is not float:
        return None
    canonical = layout.canonical_values(fields)
    custom = layout.custom_values(fields)
    if not (
        _FLOAT_ONLY.issuperset(map(type, canonical)) and _FLOAT_ONLY.issuperset(map(type, custom))
    ):
        return None
    # A float sum is finite only if every term is; one that is not may also have overflowed,
    # so each term says then.
    total = sum(custom, sum(canonical, timestamp))
    if epoch is not None:
        if type(epoch) is not float:
            return None
        total += epoch
    if total - total != 0.0 and not all(
        map(math.isfinite, (timestamp, epoch or 0.0, *canonical, *custom))
    ):
        return None
    document = dict(zip(layout.canonical, canonical, strict=True))
    document["step"] = step
    document["epoch"] = epoch
    document["timestamp"] = timestamp
    document["custom"] = dict(zip(layout.custom, custom, strict=True))
    return document


def _plain_finite(values: Any) -> bool:
    """Whether every value is a JSON scalar, and every float among them finite."""
    kinds = set(map(type, values))
    if kinds <= _NUMBERS:
        try:
            total = sum(values)
        except OverflowError:  # an int too large for a float beside a float
            return False
        return bool(total - total == 0)
    return kinds <= _JSON_SCALARS and all(v - v == 0.0 for v in values if type(v) is float)


def metrics_reported(
    job_id: str,
    source: str,
    first_seq: int,
    points: Sequence[dict[str, Any]] | orjson.Fragment,
    *,
    pipeline_id: str | None = None,
    stage: str | None = None,
    attempt: int | None = None,
) -> tuple[bytes, bytes, KafkaHeaders] | None:
    """The Kafka record (key ``job_id``) of a ``MetricsReported`` holding ``point_document``s
    (or ``step_points``' array of them); None when orjson cannot write a value (an integer
    beyond 64 bits): build the model then."""
    try:
        data = orjson.dumps(
            {
                "job_id": job_id,
                "source": source,
                "first_seq": first_seq,
                "points": points,
                "pipeline_id": pipeline_id,
                "stage": stage,
                "attempt": attempt,
            }
        )
    except TypeError:  # orjson.JSONEncodeError
        return None
    return encode_written(MetricsReported, data, key=job_id)
