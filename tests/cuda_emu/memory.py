"""Device memory for the emulator: :class:`DeviceArray` (a NumPy array standing for
device memory) between guards of signalling NaNs, so that an out-of-bounds store is seen
after a launch and an out-of-bounds read brings a NaN into the results."""
from __future__ import annotations

import types
import weakref

import numpy as np

from . import streams
from .errors import EmulationError

HOST_READS: list[str] = []  # every device-to-host read of a value, in order (tests count)
_GUARD_BYTES = 1 << 16  # a stray row of a few thousand floats still lands in a guard


def _host_read(what: str) -> None:
    streams.refuse(f"{what} (a device-to-host read)")
    HOST_READS.append(what)


def _plain(x):
    return x.view(np.ndarray) if isinstance(x, DeviceArray) else x


def _device(x):
    """A result as the device holds it: arrays and scalars (a reduction's 0-d result, as
    CuPy returns it) are device arrays; reading one back is a host read."""
    if type(x) is np.ndarray:
        return x.view(DeviceArray)
    if isinstance(x, np.generic):
        return np.asarray(x).view(DeviceArray)
    return x


class DeviceArray(np.ndarray):
    """A host array standing for device memory. ``.data.ptr`` is its address, as CuPy's.

    Array operations on it run at once, or, while a stream captures a CUDA Graph, are
    recorded into the graph (in-place ones only: one that allocates its result is
    refused, as is a host read of a value, and ``matmul``, which CuPy does through cuBLAS
    and refuses during capture)."""

    @property
    def data(self):  # cupy.ndarray.data is a MemoryPointer with .ptr
        return types.SimpleNamespace(ptr=self.ctypes.data)

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        args = tuple(_plain(x) for x in inputs)
        if out is not None:
            kwargs["out"] = tuple(_plain(o) for o in out)
        fn = getattr(ufunc, method)
        if streams.capturing() is not None:
            name = f"{ufunc.__name__}.{method}" if method != "__call__" else ufunc.__name__
            if ufunc is np.matmul:  # cupy.matmul -> tensordot_core -> cuBLAS gemmEx
                raise NotImplementedError(streams.CUBLAS_CAPTURE_MESSAGE)
            if out is None:
                streams.refuse(f"{name} allocating its result")
            if any(isinstance(x, np.ndarray) and not isinstance(x, DeviceArray)
                   for x in (*inputs, *out)):
                raise EmulationError(f"{name}: a host array in a device operation")
            streams.run(name, lambda: fn(*args, **kwargs))
            return out[0] if len(out) == 1 else out
        result = fn(*args, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return tuple(_device(r) for r in result) if isinstance(result, tuple) else _device(result)

    def __array_function__(self, func, types_, args, kwargs):
        if streams.capturing() is not None:
            if func is np.copyto:
                dst, src = args[0], args[1]
                if not isinstance(dst, DeviceArray) or (isinstance(src, np.ndarray)
                                                        and not isinstance(src, DeviceArray)):
                    raise EmulationError("copyto: a host array in a device copy during capture")
                extra = dict(kwargs)
                streams.run("copyto", lambda: np.copyto(_plain(dst), _plain(src), *args[2:],
                                                        **extra))
                return None
            if func in (np.matmul, np.dot, np.tensordot, np.einsum):
                raise NotImplementedError(streams.CUBLAS_CAPTURE_MESSAGE)
            streams.refuse(f"{func.__name__} (not emulated inside a capture)")
        result = super().__array_function__(func, types_, args, kwargs)
        # what CuPy returns is on the device too (cupy.stack gives a cupy.ndarray)
        return tuple(_device(r) for r in result) if isinstance(result, tuple) else _device(result)

    def fill(self, value) -> None:
        streams.run("fill", lambda: np.ndarray.fill(self, value))

    def __setitem__(self, key, value) -> None:
        if streams.capturing() is not None and isinstance(value, np.ndarray) \
                and not isinstance(value, DeviceArray):
            raise EmulationError("setitem: a host-to-device copy during capture")
        streams.run("setitem", lambda: np.ndarray.__setitem__(self, key, value))

    def copy(self, order="C") -> DeviceArray:
        streams.refuse("copy (an allocation)")
        out = _alloc(self.shape, self.dtype)
        np.copyto(out.view(np.ndarray), self.view(np.ndarray))
        return out

    def astype(self, dtype, *args, **kwargs):
        streams.refuse("astype (an allocation)")
        return _device(self.view(np.ndarray).astype(dtype, *args, **kwargs))

    def get(self) -> np.ndarray:
        """A host copy, as cupy.ndarray.get (a device-to-host read)."""
        _host_read("get")
        return np.array(self.view(np.ndarray))

    def item(self, *args):
        _host_read("item")
        return self.view(np.ndarray).item(*args)

    def tolist(self):
        _host_read("tolist")
        return self.view(np.ndarray).tolist()

    def __float__(self) -> float:
        _host_read("float()")
        return float(self.view(np.ndarray))

    def __int__(self) -> int:
        _host_read("int()")
        return int(self.view(np.ndarray))

    def __bool__(self) -> bool:
        _host_read("bool()")
        return bool(self.view(np.ndarray))


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
    streams.refuse("an allocation from the memory pool")
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
