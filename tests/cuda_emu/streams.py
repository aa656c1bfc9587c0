"""Streams, events and CUDA Graph capture on the emulated device, with CuPy's and the
driver's rules: while a stream captures, work is recorded into its graph instead of
running (a kernel launch, a cuBLAS call through the C API, an in-place array operation),
and what a real capture refuses is an error here too: work issued on a stream that is not
the capturing one, a host read of a device value, an allocation from the pool, a
``synchronize``. :class:`Graph.launch` replays the recorded work in order.

One emulated device per process: the capture state is module-wide, as a GPU's is.
"""
from __future__ import annotations

import itertools
import time
from typing import Callable

from .errors import EmulationError

CUBLAS_CAPTURE_MESSAGE = "calling cuBLAS API during stream capture is currently unsupported"
_ptrs = itertools.count(0x1000, 0x10)


class Stream:
    """cupy.cuda.Stream as far as the project uses it."""

    def __init__(self, non_blocking: bool = False, null: bool = False, ptr: int | None = None):
        self.ptr = 0 if null else (next(_ptrs) if ptr is None else ptr)
        self.non_blocking = non_blocking
        self.recording: list[tuple[str, Callable[[], None]]] | None = None

    def __enter__(self):
        _current.append(self)
        return self

    def __exit__(self, *exc):
        _current.pop()
        return False

    def is_capturing(self) -> bool:
        return _capture["stream"] is self

    def begin_capture(self, mode=None) -> None:
        if _capture["stream"] is not None:
            raise EmulationError(f"begin_capture: stream {_capture['stream'].ptr:#x} is "
                                 "already capturing")
        if self.ptr == 0:
            raise EmulationError("begin_capture: the legacy default stream cannot capture "
                                 "(cudaErrorStreamCaptureUnsupported)")
        self.recording = []
        _capture["stream"] = self

    def end_capture(self) -> Graph:
        if _capture["stream"] is not self:
            raise EmulationError("end_capture: this stream is not capturing")
        _capture["stream"] = None
        work, self.recording = self.recording, None
        return Graph(work)

    def synchronize(self) -> None:
        refuse("synchronize")

    def record(self, event: Event | None = None) -> Event:
        event = Event() if event is None else event
        event.record(self)
        return event

    def wait_event(self, event: Event) -> None:
        pass  # one host thread runs everything in order

    def __repr__(self) -> str:
        return f"Stream({self.ptr:#x})"


class Event:
    """cupy.cuda.Event: time by the wall clock (timings on the emulator mean nothing)."""

    def record(self, stream: Stream | None = None) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        refuse("Event.synchronize")


class Graph:
    """A captured graph: the work recorded, replayed in order by :meth:`launch`."""

    def __init__(self, work):
        self.work = list(work)

    def launch(self, stream: Stream | None = None) -> None:
        if _capture["stream"] is not None:
            raise EmulationError("Graph.launch during a capture is not emulated")
        for _, run in self.work:
            run()

    def __len__(self) -> int:
        return len(self.work)


NULL = Stream(null=True)
_current: list[Stream] = [NULL]
_capture: dict[str, Stream | None] = {"stream": None}


def current() -> Stream:
    return _current[-1]


def capturing() -> Stream | None:
    """The stream capturing now, or None."""
    return _capture["stream"]


def stream_is_capturing(ptr: int) -> bool:
    s = _capture["stream"]
    return s is not None and s.ptr == ptr


def refuse(what: str) -> None:
    """Raise if a capture is under way: `what` is not allowed during one."""
    s = _capture["stream"]
    if s is not None:
        raise EmulationError(f"{what} during the CUDA Graph capture of stream {s.ptr:#x}: not "
                             "allowed while capturing (a host read, a synchronization or an "
                             "allocation invalidates the capture)")


def run(what: str, work: Callable[[], None], stream: Stream | None = None) -> None:
    """Run `work` now, or record it into the graph of the capturing stream. Work issued
    on another stream while one captures is refused (it would escape the graph)."""
    s = _capture["stream"]
    if s is None:
        work()
        return
    on = current() if stream is None else stream
    if on is not s:
        raise EmulationError(f"{what}: issued on stream {on.ptr:#x} while stream {s.ptr:#x} "
                             "captures (it would not be in the graph)")
    s.recording.append((what, work))
