"""Device memory for the emulator: :class:`DeviceArray` (a NumPy array standing for
device memory) between guards of signalling NaNs, so that an out-of-bounds store is seen
after a launch and an out-of-bounds read brings a NaN into the results."""
from __future__ import annotations

import types
import weakref

import numpy as np

_GUARD_BYTES = 1 << 16  # a stray row of a few thousand floats still lands in a guard


class EmulationError(RuntimeError):
    """A launch the GPU would reject or get wrong: bad arguments, grid, barrier, bounds."""


class DeviceArray(np.ndarray):
    """A host array standing for device memory. ``.data.ptr`` is its address, as CuPy's."""

    @property
    def data(self):  # cupy.ndarray.data is a MemoryPointer with .ptr
        return types.SimpleNamespace(ptr=self.ctypes.data)


# What the guards hold: for floats a signalling NaN (arithmetic on one that was read out of
# bounds gives a quiet NaN, so even a NaN written back into a guard differs), else 0xA5 bytes.
_GUARD_WORD = {4: np.uint32(0x7FA5A5A5), 8: np.uint64(0x7FF4A5A5A5A5A5A5)}
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
# id(buffer) -> (weak reference to the whole buffer, guards included; elements per guard)
_GUARDED: dict[int, tuple[weakref.ref, int]] = {}


def _guard_word(dtype: np.dtype):
    if dtype.kind == "f":
        return _GUARD_WORD[dtype.itemsize]
    return np.frombuffer(b"\xa5" * dtype.itemsize, _UINT[dtype.itemsize])[0]


def _alloc(shape, dtype) -> DeviceArray:
    dtype = np.dtype(dtype)
    shape = (shape,) if np.isscalar(shape) else tuple(int(s) for s in shape)
    n = int(np.prod(shape, dtype=np.int64))
    g = _GUARD_BYTES // dtype.itemsize
    buf = np.empty(2 * g + n, dtype)
    words = buf.view(_UINT[dtype.itemsize])
    words[:g] = words[g + n:] = _guard_word(dtype)
    key = id(buf)
    _GUARDED[key] = (weakref.ref(buf, lambda _, key=key: _GUARDED.pop(key, None)), g)
    return buf[g:g + n].reshape(shape).view(DeviceArray)


def check_guards(after: str) -> None:
    """Raise if any guarded allocation's guards were written (an out-of-bounds store)."""
    for ref, g in list(_GUARDED.values()):
        buf = ref()
        if buf is None:
            continue
        words = buf.view(_UINT[buf.dtype.itemsize])
        want = _guard_word(buf.dtype)
        changed = int((words[:g] != want).sum() + (words[len(words) - g:] != want).sum())
        if changed:
            words[:g] = words[len(words) - g:] = want
            raise EmulationError(f"{after}: wrote outside an array ({changed} guard elements "
                                 f"changed around a {buf.dtype} array of {len(buf) - 2 * g})")


def empty(shape, dtype=np.float64) -> DeviceArray:
    """Not zeros, as on a GPU: filled like the guards, so reading it before writing shows."""
    a = _alloc(shape, dtype)
    a.view(_UINT[a.dtype.itemsize])[...] = _guard_word(a.dtype)
    return a


def zeros(shape, dtype=np.float64) -> DeviceArray:
    a = _alloc(shape, dtype)
    a[...] = 0
    return a


def ones(shape, dtype=np.float64) -> DeviceArray:
    a = _alloc(shape, dtype)
    a[...] = 1
    return a


def asarray(a, dtype=None) -> DeviceArray:
    """A device copy of `a`; a device array of the dtype asked for comes back as it is."""
    if isinstance(a, DeviceArray) and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    a = np.asarray(a, dtype=dtype)
    out = _alloc(a.shape, a.dtype)
    out[...] = a
    return out


def empty_like(a, dtype=None) -> DeviceArray:
    return empty(a.shape, a.dtype if dtype is None else dtype)


def zeros_like(a, dtype=None) -> DeviceArray:
    return zeros(a.shape, a.dtype if dtype is None else dtype)


def ascontiguousarray(a, dtype=None) -> DeviceArray:
    a = np.asarray(a, dtype=dtype)
    if a.flags.c_contiguous and isinstance(a, DeviceArray):
        return a
    return asarray(a)
