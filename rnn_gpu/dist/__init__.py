"""Data-parallel training on several processes, GPUs and machines, with MPI (mpi4py)
launching and coordinating the ranks and NCCL summing gradients between GPUs.

``mpiexec -n N rnn-gpu train ...`` trains one model on N ranks; :func:`world` detects
the launch (mpi4py is imported only then). :class:`Communicator` (``rank``, ``size``,
``allreduce_sum``, ``broadcast``, ``gather``, ``allgather``) is what the trainer uses and
what scripts can use; :class:`DataParallel` is the trainer's side of it.
"""
from __future__ import annotations

from .comm import Communicator, LocalCommunicator, MPICommunicator, sum_in_rank_order, world
from .data_parallel import DataParallel, DistributedError, split_range, stream_range
from .launch import (DEFAULT_TIMEOUT, TIMEOUT_VARIABLE, collective_timeout, launched_under_mpi,
                     world_size_from_env)

__all__ = ["Communicator", "DEFAULT_TIMEOUT", "DataParallel", "DistributedError",
           "LocalCommunicator", "MPICommunicator", "TIMEOUT_VARIABLE", "collective_timeout",
           "launched_under_mpi", "split_range", "stream_range", "sum_in_rank_order", "world",
           "world_size_from_env"]
