"""Run by test_nccl.py under ``mpiexec -n N``: a short training run on the emulated CUDA
device, the gradients summed by the stand-in NCCL over MPI; rank 0 saves the parameters,
which summer was used, and how many allGathers it made. Args: DATA CHECKPOINT OUT."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import rnn_gpu  # noqa: E402
from rnn_gpu.dist import world  # noqa: E402
from rnn_gpu.lm import TrainConfig, Trainer  # noqa: E402
from tests import cuda_emu  # noqa: E402
from tests.cuda_emu import nccl as fake_nccl  # noqa: E402

data, checkpoint, out = sys.argv[1:4]
comm = world()
fake_nccl.transport = comm
cfg = TrainConfig(data=data, hidden=13, batch_size=4, bptt=7, max_steps=4, dtype="float64",
                  backend=cuda_emu.emulated_backend(), cuda_graph=False, out=checkpoint,
                  sample_length=0, seed=3, lr=1e-2)
tr = Trainer(cfg, console=Console(file=io.StringIO()), comm=comm)
tr.dist._nccl_module = fake_nccl
tr.fit()
if comm.rank == 0:
    np.savez(out, summer=type(tr.dist._summer).__name__,
             allgathers=sum(1 for c in fake_nccl.calls if c[0] == "allGather"),
             **{k: rnn_gpu.to_numpy(v) for k, v in tr.model.params.items()})
