"""Checkpoints: one ``.npz`` file holding everything needed to sample or resume.

Layout (format versions 1 and 2) -- every entry is a plain array, loadable with
``numpy.load(path, allow_pickle=False)``. Version 2 is the same layout for the models an
rnn-gpu that reads version 1 only would build wrongly (stacked or bidirectional layers,
gated cells, the adaptive softmax: their ``model`` record has keys it ignores; a record
without ``cell`` is an Elman model); a one-layer Elman softmax
model is written as version 1, exactly as before:

=====================  ===================================================================
``meta``               uint8: UTF-8 JSON with ``format``, ``format_version``, the rnn-gpu
                       version, ``model`` (the RNN's constructor arguments), ``vocab``,
                       ``train_config``, ``train_state`` (step, epoch, data position, RNG
                       state, history), ``optimizer`` and ``schedule`` (their scalars)
``param/<name>``       the parameters: U (H, I), W (H, H), V (O, H), b (H,), c (O,), and
                       those of further layers, directions and the adaptive head
                       (``RNN.config_param_shapes``)
``optim/<slot>/<p>``   optimizer state, e.g. ``optim/exp_avg/W``
``state/<name>``       other training state, e.g. ``state/hidden`` (B, H), the hidden state
                       carried into the next chunk (an LSTM's h, with its c in
                       ``state/hidden_c``)
=====================  ===================================================================

Files are written atomically: to a temporary file in the same directory, flushed and
fsync'ed, then renamed over the target, so a crash leaves either the old checkpoint or
the new one, never half of one; a write removes the temporaries that an earlier write of
the same name, killed midway, left behind. New files get the umask's mode, as any other
file the user writes. Arrays are stored on the host, so a checkpoint written on a GPU
loads on a machine without one. A run also keeps its best weights beside its checkpoint
(:func:`best_path`: ``NAME.best.npz``), a checkpoint of the same layout.
"""
from __future__ import annotations

import errno
import glob
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import to_numpy
from ..errors import CheckpointError, DataError
from ..model import DTYPES, MODEL_OUTPUTS, PARAM_NAMES, RNN
from ..reference import ACTIVATIONS
from .data import Vocab

FORMAT = "rnn-gpu checkpoint"
FORMAT_VERSION = 2  # the newest written; every version in READABLE loads
READABLE = (1, 2)


def format_version(model_config: dict) -> int:
    """The format version a model of `model_config` is written with: 1 for the one-layer
    unidirectional model with a dense output layer (today's, readable by every rnn-gpu), 2
    for a model an older reader would build wrongly."""
    plain = (int(model_config.get("num_layers", 1)) == 1
             and not model_config.get("bidirectional", False)
             and model_config.get("cell", "elman") == "elman"
             and model_config.get("output", "softmax") != "adaptive")
    return 1 if plain else 2


def _model_config(model) -> dict:
    cfg = dict(model.config)
    cfg["dtype"] = np.dtype(cfg.get("dtype", model.dtype)).name
    return json.loads(json.dumps(cfg, default=str))


def _param_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    return RNN.config_param_shapes(cfg)


def _write_arrays(f, arrays: dict[str, np.ndarray]) -> None:
    """Serialize `arrays` into the open binary file `f` (a separate function so that tests
    can simulate a crash in the middle of a write)."""
    np.savez(f, **arrays)


def best_path(path: str | Path) -> Path:
    """Where a run writing to `path` keeps its best weights: ``NAME.best.npz`` beside it."""
    path = Path(path)
    stem = path.name[:-4] if path.name.endswith(".npz") else path.name
    return path.with_name(f"{stem}.best.npz")


def _temporaries(path: Path) -> list[Path]:
    """Temporary files that :func:`atomic_write_npz` leaves when killed while writing `path`."""
    parent = path.parent if str(path.parent) else Path(".")
    return [p for p in parent.glob(f".{glob.escape(path.name)}.*.tmp")
            if len(p.name) == len(path.name) + 14 and p.is_file()]  # mkstemp: 8 random chars


def _new_file_mode(path: Path) -> int:
    """The mode of the file `path` replaces, else what the umask gives a new file."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def probe_writable(path: str | Path) -> None:
    """OSError unless a file can be created, written and removed beside `path` (checked
    before a run trains for minutes and then fails at its first checkpoint)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    finally:
        os.unlink(tmp)


def atomic_write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write `arrays` as an .npz at `path` atomically (temporary file, fsync, rename).

    Temporaries that an earlier, killed write of the same `path` left are removed first.
    The file gets the mode of the one it replaces, or the umask's for a new file; a
    read-only file is never replaced. An OSError names `path`; the file that was there is
    left as it was."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CheckpointError(f"cannot write checkpoint {path}: directory {parent} does not exist")
    if path.is_file() and not os.stat(path).st_mode & 0o222:  # even where root could
        raise PermissionError(errno.EACCES, f"cannot write checkpoint {path}: it is read-only "
                              "and is never replaced")
    for stale in _temporaries(path):
        try:
            stale.unlink()
        except OSError:
            pass
    mode = _new_file_mode(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OSError(e.errno, f"cannot write checkpoint {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            _write_arrays(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise OSError(e.errno, f"cannot write checkpoint {path}: {e.strerror or e}") from None
        raise
    try:  # make the rename itself durable; not possible on every platform
        dfd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def save_checkpoint(
    path: str | Path,
    model,
    *,
    vocab: Vocab | None = None,
    train_config: dict | None = None,
    train_state: dict | None = None,
    optimizer=None,
    schedule=None,
    arrays: dict[str, Any] | None = None,
) -> Path:
    """Save `model` (and, for resuming, the training state) to `path` atomically.

    `arrays` holds extra state arrays, stored as ``state/<name>``; they may live on
    either backend.
    """
    from .. import __version__  # noqa: PLC0415

    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": format_version(model.config),
        "rnn_gpu_version": __version__,
        "model": _model_config(model),
        "vocab": vocab.to_json() if vocab is not None else None,
        "train_config": train_config,
        "train_state": train_state,
        "optimizer": None,
        "schedule": schedule.state_dict() if schedule is not None else None,
    }
    out: dict[str, np.ndarray] = {f"param/{k}": to_numpy(v) for k, v in model.params.items()}
    if optimizer is not None:
        ometa, oarrays = optimizer.state_dict()
        meta["optimizer"] = ometa
        out.update({f"optim/{k}": v for k, v in oarrays.items()})
    for k, v in (arrays or {}).items():
        out[f"state/{k}"] = to_numpy(v)
    blob = json.dumps(meta, ensure_ascii=False, allow_nan=True).encode("utf-8")
    out["meta"] = np.frombuffer(blob, dtype=np.uint8)
    return atomic_write_npz(path, out)


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``model`` is rebuilt on the requested backend."""

    path: Path
    meta: dict
    params: dict[str, np.ndarray]  # host copies
    optim: dict[str, np.ndarray] = field(default_factory=dict)  # "<slot>/<param>"
    state: dict[str, np.ndarray] = field(default_factory=dict)
    model: Any = None
    vocab: Vocab | None = None

    @property
    def model_config(self) -> dict:
        return self.meta["model"]

    @property
    def train_config(self) -> dict | None:
        return self.meta.get("train_config")

    @property
    def train_state(self) -> dict | None:
        return self.meta.get("train_state")


def build_model(model_config: dict, params: dict[str, np.ndarray], backend="auto"):
    """An RNN with `model_config`'s shape and the given parameter values, on `backend`."""
    from ..model import RNN  # noqa: PLC0415

    return RNN.from_config(model_config, backend=backend, params=params)


def load_checkpoint(path: str | Path, backend="auto", *, with_model: bool = True) -> Checkpoint:
    """Read and validate a checkpoint; rebuild its model on `backend` ("auto", "numpy",
    "cupy"). CheckpointError, with one line saying what is wrong, on any problem."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, expected an .npz file")
    try:
        with open(path, "rb") as f:  # our own handle: closed even when np.load fails
            magic = f.read(6)
            f.seek(0)
            if not (magic.startswith(b"PK") or magic == b"\x93NUMPY"):
                raise CheckpointError(f"checkpoint {path} is truncated or corrupt, or not an .npz "
                                      "file (it does not start as a zip archive does)")
            z = np.load(f, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise CheckpointError(f"{path} is a single .npy array, not an rnn-gpu checkpoint")
            with z:
                arrays = {k: z[k] for k in z.files}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as e:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt, or not an .npz file "
            f"({type(e).__name__}: {e})"
        ) from None
    if "meta" not in arrays:
        raise CheckpointError(f"{path} is not an rnn-gpu checkpoint (no 'meta' entry)")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} has unreadable metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rnn-gpu checkpoint (format {meta.get('format')!r})"
                              if isinstance(meta, dict) else f"{path} is not an rnn-gpu checkpoint")
    version = meta.get("format_version")
    if version not in READABLE:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, but this rnn-gpu "
            f"({meta.get('rnn_gpu_version', '?')} wrote it) reads versions "
            f"{', '.join(map(str, READABLE))} only"
        )
    cfg = meta.get("model")
    if not isinstance(cfg, dict) or any(
        k not in cfg for k in ("input_size", "hidden_size", "output_size")
    ):
        raise CheckpointError(f"checkpoint {path} lacks the model configuration")
    params, optim, state = {}, {}, {}
    for k, v in arrays.items():
        head, _, rest = k.partition("/")
        {"param": params, "optim": optim, "state": state}.get(head, {})[rest] = v
    try:
        shapes = _param_shapes(cfg)
    except ValueError as e:  # a model configuration this rnn-gpu cannot build
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    for k, shape in shapes.items():
        if k not in params:
            raise CheckpointError(f"checkpoint {path} lacks parameter {k!r}")
        if params[k].shape != shape:
            raise CheckpointError(
                f"checkpoint {path}: parameter {k} has shape {params[k].shape}, "
                f"but the model configuration says {shape}"
            )
    for k in shapes:
        if params[k].dtype.kind != "f" or not np.isfinite(params[k]).all():
            raise CheckpointError(f"checkpoint {path}: parameter {k} holds NaN, inf or non-float "
                                  "values; the run that wrote it diverged or the file is damaged")
    for k, choices in (("hidden_activation", ACTIVATIONS), ("output", MODEL_OUTPUTS), ("dtype", DTYPES)):
        if k in cfg and cfg[k] not in choices:
            raise CheckpointError(f"checkpoint {path}: unknown {k} {cfg[k]!r} in the model "
                                  f"configuration (this rnn-gpu knows {', '.join(choices)})")
    vocab = None
    if meta.get("vocab") is not None:
        try:
            vocab = Vocab.from_json(meta["vocab"])
        except DataError as e:
            raise CheckpointError(f"checkpoint {path}: {e}") from None
        if len(vocab) != cfg["input_size"]:
            raise CheckpointError(
                f"checkpoint {path}: vocabulary of {len(vocab)} tokens does not match the "
                f"model's input size {cfg['input_size']}"
            )
    ck = Checkpoint(path, meta, params, optim, state, None, vocab)
    if with_model:
        ck.model = build_model(cfg, params, backend)
    return ck
