"""What work on the emulated CUDA backend would cost on a card: launches, host synchronisations,
allocations and the bytes each kernel moves, counted while it runs.

At the sizes people train (batch 100, a few layers) a step's time on a GPU is set less by its
arithmetic than by what the host does per step: each kernel launch or library call costs a few
microseconds, a host synchronisation stalls the pipeline, an allocation goes through the memory
pool (and keeps a step from being captured as a CUDA graph). The CuPy stand-in (``arrays.py``)
and the kernel launcher (``emulator.py``) report each of these here, so a test can pin a step's
budget and ``benchmarks/step_cost.py`` can print it::

    with emulator.counting() as cost:
        model.loss_grad(X, y, 0.0)
    print(cost.summary("linear step"))   # linear step: 2 launches, 0 host syncs, 7 allocations, ...

What is counted (one ``Event`` each):

- ``kernel``: a launch of one of gpugrad's kernels. Bytes: every array argument's whole extent,
  read when the kernel's parameter points to const, written otherwise (an upper bound: a kernel
  may touch less of an argument, and reads that hit L2 are counted as if they came from memory);
  a pointer that is not the start of a live array (a slot inside a slab, on the direct call path)
  counts 0 bytes.
- ``op``: a CuPy array operation (an elementwise op, a reduction, a matrix product, a gather or
  scatter by an index array, a copy, astype, fill, concatenate ...): a kernel launch or a library
  call on a card. Where it cannot be told what CuPy would launch, one launch per operation (a
  lower bound for the few that CuPy splits in several). Bytes: the device arrays it reads (each
  operand once, broadcast or not, index arrays included) and the arrays it writes.
- ``sync``: a host synchronisation: ``.get()``, ``cupy.asnumpy``, ``float``/``int``/``bool``/
  ``.item()``/``.tolist()``/``repr`` of a device array, and operations whose result size the host
  must know (a boolean-mask gather, ``nonzero``).
- ``alloc``: a new device array (``empty``, ``zeros``, an op's result, a copy to the device); views
  allocate nothing.
- ``upload``: a copy from host memory to the device (``cupy.asarray`` of a numpy array, a host
  index array); not a kernel, and not counted in the bytes.

Counting costs one list check per event when nothing is counting.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from typing import NamedTuple

__all__ = ["Event", "Cost", "counting", "record", "LAUNCHES"]

LAUNCHES = ("kernel", "op")  # the kinds of event that are a launch (or library call) on a card


class Event(NamedTuple):
    kind: str       # "kernel", "op", "sync", "alloc" or "upload"
    name: str       # the kernel, the operation, or what synchronised / allocated
    read: int = 0   # bytes a launch reads
    written: int = 0  # bytes a launch writes


class Cost:
    """The events counted in one ``counting()`` block, in order, and their totals.

    Attributes: ``events`` (list of ``Event``), ``marks`` ((label, event index) pairs set by
    ``mark``). Totals: ``launches``, ``syncs``, ``allocations``, ``uploads``, ``bytes_read``,
    ``bytes_written``, ``bytes`` (read + written); ``kernels`` names the launches in order.
    """

    def __init__(self, events=None):
        self.events: list[Event] = [] if events is None else list(events)
        self.marks: list[tuple[str, int]] = []

    def _count(self, kind) -> int:
        return sum(1 for e in self.events if e.kind == kind)

    launches = property(lambda self: sum(1 for e in self.events if e.kind in LAUNCHES))
    syncs = property(lambda self: self._count("sync"))
    allocations = property(lambda self: self._count("alloc"))
    uploads = property(lambda self: self._count("upload"))
    bytes_read = property(lambda self: sum(e.read for e in self.events))
    bytes_written = property(lambda self: sum(e.written for e in self.events))
    bytes = property(lambda self: self.bytes_read + self.bytes_written)

    @property
    def kernels(self) -> list[str]:
        """The launches in order: gpugrad's kernels by name, CuPy's operations as "cupy.<op>"."""
        return [e.name if e.kind == "kernel" else f"cupy.{e.name}" for e in self.events if e.kind in LAUNCHES]

    def by_kind(self, kind) -> Counter:
        """{name: count} of the events of one kind ("sync", "alloc", ...); LAUNCHES for launches."""
        kinds = LAUNCHES if kind == LAUNCHES else (kind,)
        return Counter(e.name if e.kind != "op" else f"cupy.{e.name}" for e in self.events if e.kind in kinds)

    def mark(self, label: str) -> None:
        """Start a segment called `label` here (see ``segments``)."""
        self.marks.append((label, len(self.events)))

    def segments(self) -> list[tuple[str, "Cost"]]:
        """[(label, the events from this mark to the next)], from the first mark on."""
        ends = [i for _, i in self.marks[1:]] + [len(self.events)]
        return [(label, Cost(self.events[i:end])) for (label, i), end in zip(self.marks, ends)]

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.events + other.events)

    def as_dict(self) -> dict:
        return {"launches": self.launches, "syncs": self.syncs, "allocations": self.allocations,
                "uploads": self.uploads, "bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
                "kernels": self.kernels, "sync_reasons": dict(self.by_kind("sync")),
                "allocated_by": dict(self.by_kind("alloc"))}

    def summary(self, title: str, per: int = 1) -> str:
        """One line, "title: 3 launches, 0 host syncs, 0 allocations, 1.23 MB moved"; figures
        divided by `per` (steps in an epoch, say) when per > 1."""
        f = (lambda v: f"{v / per:.4g}") if per > 1 else str
        return (f"{title}: {f(self.launches)} launches, {f(self.syncs)} host syncs, "
                f"{f(self.allocations)} allocations, {f(self.uploads)} uploads, "
                f"{self.bytes / per / 1e6:.3g} MB moved")

    def __repr__(self):
        return f"<Cost {self.summary('')[2:]}>"


_ACTIVE: list[Cost] = []  # the counting() blocks open now, innermost last


def record(kind: str, name: str, read: int = 0, written: int = 0) -> None:
    """Add one event to every open ``counting()`` block (callers check ``_ACTIVE`` first)."""
    event = Event(kind, name, int(read), int(written))
    for cost in _ACTIVE:
        cost.events.append(event)


@contextlib.contextmanager
def counting():
    """Count what runs inside the block on the emulated backend; yields the ``Cost`` it fills.
    Blocks nest: an event counts in every open block."""
    cost = Cost()
    _ACTIVE.append(cost)
    try:
        yield cost
    finally:
        _ACTIVE.remove(cost)
