"""Is this process one rank of an MPI job? Answered from the environment the launcher
sets, so that a run without MPI never imports mpi4py.

``mpiexec``/``mpirun`` of MPICH, Intel MPI and MVAPICH (through PMI), Open MPI, and
``srun`` with PMI or PMIx all export the world size to every rank; the first variable of
:data:`SIZE_VARIABLES` that is set gives it.
"""
from __future__ import annotations

import os

SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE",
                  "MPI_WORLD_SIZE")
TIMEOUT_VARIABLE = "RNN_GPU_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT = 300.0  # seconds a rank waits in one collective before aborting the job


def world_size_from_env(environ=None) -> int:
    """The MPI world size the launcher announced, 1 when none did."""
    env = os.environ if environ is None else environ
    for name in SIZE_VARIABLES:
        v = env.get(name, "").strip()
        if v.isdigit() and int(v) > 0:
            return int(v)
    return 1


def launched_under_mpi(environ=None) -> bool:
    """True when this process is one of several ranks of an MPI job."""
    return world_size_from_env(environ) > 1


def collective_timeout(environ=None) -> float:
    """Seconds one collective may take (RNN_GPU_COLLECTIVE_TIMEOUT, default 300)."""
    env = os.environ if environ is None else environ
    raw = env.get(TIMEOUT_VARIABLE, "")
    try:
        t = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        raise ValueError(f"{TIMEOUT_VARIABLE}: expected seconds, got {raw!r}") from None
    if not t > 0:
        raise ValueError(f"{TIMEOUT_VARIABLE}: expected a positive number of seconds, got {raw!r}")
    return t
