"""Ranks as threads of one process: a :class:`rnn_gpu.dist.Communicator` whose
collectives meet at a barrier, for testing data-parallel code without MPI."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from rnn_gpu.dist import Communicator


class _World:
    def __init__(self, size: int):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=60)
        self.slots: list = [None] * size


class ThreadCommunicator(Communicator):
    def __init__(self, world: _World, rank: int):
        self.world, self.rank, self.size, self.local_rank = world, rank, world.size, rank

    def allgather_bytes(self, buf):
        w = self.world
        w.slots[self.rank] = np.array(buf, dtype=np.uint8).reshape(-1)
        w.barrier.wait()
        out = [s.copy() for s in w.slots]
        w.barrier.wait()
        return out

    def broadcast_bytes(self, buf, root=0):
        mine = buf if self.rank == root else np.empty(0, dtype=np.uint8)
        return self.allgather_bytes(mine)[root]

    def fail(self, message, code):
        self.world.barrier.abort()
        raise RuntimeError(message)


def run_ranks(size: int, fn):
    """[fn(comm) for each rank], the ranks running as threads."""
    world = _World(size)
    with ThreadPoolExecutor(size) as pool:
        futures = [pool.submit(fn, ThreadCommunicator(world, r)) for r in range(size)]
        return [f.result() for f in futures]
