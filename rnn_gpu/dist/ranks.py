"""``rnn-gpu train`` as one of several MPI ranks: how failures end the job.

Setting up (reading the data, building the model, the checks made before training) ends
in a vote: if any rank failed, rank 0 prints the first failure (its own, else the other
rank's, named) and every rank exits with its status; nothing was written. During
training a failing rank hands its reason to rank 0, which prints it and aborts the job
(``MPI_Abort``, the exit status of mpiexec); checkpoints are written atomically, so the
last good one stays in place.
"""
from __future__ import annotations

import sys
from typing import Callable

from .comm import Communicator


def train_ranks(comm: Communicator, make: Callable, run: Callable[[object], int],
                failure: Callable[[BaseException], tuple[int, str]]) -> int:
    """``run(make())`` on this rank; `failure` maps an exception to (status, line)."""
    trainer, verdict = None, None
    try:
        trainer = make()
    except Exception as e:  # noqa: BLE001 - every rank must reach the vote
        verdict = failure(e)
    verdicts = comm.allgather(verdict)
    failed = [(r, v) for r, v in enumerate(verdicts) if v is not None]
    if failed:
        r, (code, line) = failed[0]
        if comm.rank == 0:
            if r:
                line = line.replace("rnn-gpu: error: ", f"rnn-gpu: error: rank {r}: ", 1)
            print(line, file=sys.stderr)
        return code
    try:
        return run(trainer)
    except BaseException as e:  # noqa: BLE001 - includes KeyboardInterrupt
        if isinstance(e, SystemExit):
            raise
        code, line = failure(e)
        comm.fail(line, code)
        raise
