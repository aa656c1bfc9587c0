"""A whole training step (forward + backward) captured once as a CUDA Graph and replayed.

At small batch the engine's loop over time is launch-bound: a step is a few kernels and a
GEMM per time step, each microseconds of GPU work behind microseconds of Python and launch
overhead. :class:`GraphedStep` records the step for one shape (T, B, input kind,
truncation, mask) with CuPy stream capture, then replays it with one launch.

How it stays correct:

* Inputs (ids or dense x, targets, h0, keep) are copied into static buffers owned by the
  step; the graph reads those addresses. An LSTM's initial state is the pair (h0, c0):
  two static buffers, each of the engine's ``state_shape``. Parameters and gradients are read and written at
  the addresses of the arrays seen at capture, so in-place optimizer updates are seen by
  every replay; if a call passes parameter arrays at other addresses, the step is
  recaptured.
* One eager run on the capture stream comes first: it compiles every kernel, times the
  outer-product versions for these shapes, and leaves the engine's workspace allocated.
* Nothing may allocate during capture (a block returned to CuPy's pool afterwards could be
  handed out again while the graph still writes to it). Every allocation made during the
  capture is therefore kept alive by the step and counted in :attr:`capture_allocations`,
  which the tests expect to be 0.
* The summed loss is read after the replay (a host sync), exactly as the eager path does.
* The step captured is the engine's own :meth:`rnn_gpu.engine.Engine.run_step`, the one
  the eager path runs, dropout included (its multipliers are a static input too).
* The adaptive softmax's clusters have data-dependent sizes: during the capture its head
  runs every cluster over all T*B rows (rows past the cluster's count, kept on the device,
  are zeros of weight 0), so the graph's shapes are fixed and no host read happens.

The eager path (:meth:`GraphedStep.eager`, or the engine itself) stays; both give the same
bits, except dU for token inputs whose repeated ids are summed with atomics in no fixed
order (see ``kernels/rnn_embed.cu``). The array module is the engine's (``engine.xp``):
nothing here imports CuPy.
"""
from __future__ import annotations

from typing import Any

from ..states import from_parts, is_pair
from ..states import parts as state_parts


class GraphedStep:
    """One captured training step of `engine` for a fixed shape.

    engine: a CuPy-backend :class:`rnn_gpu.engine.Engine`; T, B: sequence length and batch;
    dense: float inputs (T, B, I) instead of token ids (T, B); truncate: None or k >= 0 as
    in ``loss_and_grads``; masked: whether calls pass a keep mask (T, B); dropout: whether
    calls pass dropout multipliers (the engine's ``dropout_shape``: (T, B, H) for one
    layer). Stacks and both directions are captured as they run eagerly. The initial
    state is one array of ``engine.state_shape(B)``, or for an LSTM a pair (h0, c0) of
    them (:attr:`h0` is then a pair of static buffers too).
    """

    def __init__(self, engine, T: int, B: int, dense: bool, truncate: int | None,
                 masked: bool, dropout: bool = False):
        if not engine.backend.is_gpu:
            raise ValueError("engine: expected an engine on the CuPy backend, got "
                             f"backend {engine.backend.name!r}")
        if truncate is not None and (isinstance(truncate, bool) or int(truncate) < 0):
            raise ValueError(f"truncate: expected None or an integer >= 0, got {truncate!r}")
        self.engine = engine
        self.xp = cp = engine.xp
        self.T, self.B = int(T), int(B)
        self.dense, self.masked = bool(dense), bool(masked)
        self.truncate = None if truncate is None else int(truncate)
        I, H, O = engine.sizes
        dt = engine.dtype
        self.ws = engine.workspace(self.T, self.B, self.dense, self.truncate, self.masked)
        # Static inputs. Ids are int32 (any vocabulary below 2^31 fits).
        self.x = (cp.zeros((T, B, I), dtype=dt) if dense
                  else cp.zeros((T, B), dtype=cp.int32))
        self.y = (cp.zeros((T, B), dtype=cp.int32) if engine.output in ("softmax", "adaptive")
                  else cp.zeros((T, B, O), dtype=dt))
        self.pair = getattr(engine, "cell", "elman") == "lstm"  # the state is (h, c)
        self.h0 = from_parts([cp.zeros(engine.state_shape(B), dtype=dt)
                              for _ in range(2 if self.pair else 1)], self.pair)
        self.keep = cp.ones((T, B), dtype=dt) if masked else None
        self.drop = cp.ones(engine.dropout_shape(T, B), dtype=dt) if dropout else None
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.graph = None
        self._param_ptrs: tuple | None = None
        self._capture_memory: list = []
        self.capture_allocations = 0
        self.replays = 0

    # ---------------------------------------------------------------------------------

    def _load(self, x, y, h0, keep, drop) -> None:
        """Copy a call's inputs into the static buffers (on self.stream)."""
        cp = self.xp
        T, B = self.T, self.B
        if tuple(x.shape) != tuple(self.x.shape):
            raise ValueError(f"x: expected shape {tuple(self.x.shape)}, got {tuple(x.shape)}")
        if tuple(y.shape) != tuple(self.y.shape):
            raise ValueError(f"y: expected shape {tuple(self.y.shape)}, got {tuple(y.shape)}")
        cp.copyto(self.x, cp.asarray(x), casting="unsafe")
        cp.copyto(self.y, cp.asarray(y), casting="unsafe")
        self._load_state(h0)
        if self.masked:
            if keep is None:
                self.keep.fill(1)  # no mask: every step is real
            else:
                if tuple(keep.shape) != (T, B):
                    raise ValueError(f"keep: expected shape ({T}, {B}), got {tuple(keep.shape)}")
                cp.copyto(self.keep, cp.asarray(keep), casting="unsafe")
        elif keep is not None:
            raise ValueError("keep: expected None for a step captured with masked=False, got "
                             "an array (make a GraphedStep with masked=True)")
        if self.drop is not None:
            if drop is None:
                self.drop.fill(1)  # no dropout this call
            else:
                if tuple(drop.shape) != tuple(self.drop.shape):
                    raise ValueError(f"drop: expected shape {tuple(self.drop.shape)}, got "
                                     f"{tuple(drop.shape)}")
                cp.copyto(self.drop, cp.asarray(drop), casting="unsafe")
        elif drop is not None:
            raise ValueError("drop: expected None for a step captured with dropout=False, got "
                             "an array (make a GraphedStep with dropout=True)")

    def _load_state(self, h0) -> None:
        """Copy the initial state (None: zeros; an LSTM's pair (h0, c0)) into the static
        buffer(s)."""
        cp = self.xp
        bufs = state_parts(self.h0)
        if h0 is None:
            for buf in bufs:
                buf.fill(0)
            return
        if is_pair(h0) != self.pair or len(state_parts(h0)) != len(bufs):
            want = (f"a pair (h0, c0) of arrays of shape {tuple(bufs[0].shape)} (an LSTM's "
                    "state)" if self.pair else f"one array of shape {tuple(bufs[0].shape)}")
            got = (f"a {type(h0).__name__} of {len(h0)}" if is_pair(h0)
                   else f"an array of shape {tuple(h0.shape)}")
            raise ValueError(f"h0: expected {want}, got {got}")
        for name, buf, a in zip(("h0", "c0"), bufs, state_parts(h0)):
            if a is None or tuple(a.shape) != tuple(buf.shape):
                got = "None" if a is None else f"shape {tuple(a.shape)}"
                raise ValueError(f"{name}: expected shape {tuple(buf.shape)}, got {got}")
        for buf, a in zip(bufs, state_parts(h0)):
            cp.copyto(buf, cp.asarray(a), casting="unsafe")

    def _step(self, params) -> None:
        """The engine's step on the static buffers (no host sync)."""
        self.engine.run_step(self.ws, params, self.x, self.y, self.h0, self.keep,
                             self.truncate, self.drop)

    def _result(self) -> tuple[float, dict, Any]:
        h_last = self.engine.h_last(self.ws, self.T)  # before the sync below: complete too
        loss = self.engine.summed_loss(self.ws)  # syncs self.stream
        return loss, self.engine.grads, h_last

    def _capture(self, params) -> None:
        cp = self.xp
        pool = cp.get_default_memory_pool()
        kept = []

        def alloc(size):
            mem = pool.malloc(size)
            kept.append(mem)  # owned by the graph from now on: never back to the pool
            return mem

        with self.stream:
            self._step(params)  # eager warm-up: compiles, times outer_accum, allocates
            self.engine.ops.prepare_capture()  # cuBLAS's workspace, before capturing
            self.stream.synchronize()
            with cp.cuda.using_allocator(alloc):
                self.stream.begin_capture()
                try:
                    self._step(params)
                except BaseException:
                    # The stream must leave capture mode, but the capture is already
                    # invalid and ending it fails too: report the step's own error.
                    try:
                        self.stream.end_capture()
                    except Exception:  # noqa: BLE001
                        pass
                    raise
                graph = self.stream.end_capture()
        self.graph = graph
        self._capture_memory = kept
        self.capture_allocations = len(kept)
        self._param_ptrs = _ptrs(params)

    # ---------------------------------------------------------------------------------

    def __call__(self, params: dict, x, y, h0=None, keep=None,
                 drop=None) -> tuple[float, dict, Any]:
        """Loss, gradients and last state for one batch, by replaying the graph.

        params: the model's parameter dict (CuPy arrays); x, y, h0, keep, drop: as
        ``Engine.loss_and_grads`` takes them (CuPy arrays of this step's shapes).
        Returns (loss, grads, h_last) like ``Engine.loss_and_grads``.
        """
        caller = self.xp.cuda.get_current_stream()
        self.stream.wait_event(caller.record())  # inputs and parameter updates are done
        with self.stream:
            self._load(x, y, h0, keep, drop)
            if self.graph is None or _ptrs(params) != self._param_ptrs:
                self._capture(params)
            self.graph.launch(stream=self.stream)
            self.replays += 1
            out = self._result()
        return out

    def eager(self, params: dict, x, y, h0=None, keep=None,
              drop=None) -> tuple[float, dict, Any]:
        """The same step without the graph, on the same stream and buffers (for checks)."""
        caller = self.xp.cuda.get_current_stream()
        self.stream.wait_event(caller.record())
        with self.stream:
            self._load(x, y, h0, keep, drop)
            self._step(params)
            return self._result()


def _ptrs(params: dict) -> tuple:
    return tuple((k, params[k].data.ptr) for k in sorted(params))
