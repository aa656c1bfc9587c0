"""Run by the mpiexec tests: ``rnn-gpu train ARGS`` on each rank, with one rank made to
fail or to be interrupted at a given step (RNN_GPU_TEST_FAULT=rank:step:raise|sleep|sigint)."""
from __future__ import annotations

import os
import signal
import sys
import time

import rnn_gpu.cli as cli
from rnn_gpu.dist import world
from rnn_gpu.lm import Trainer

fault = os.environ.get("RNN_GPU_TEST_FAULT")
if fault:
    rank, step, kind = fault.split(":")
    if world().rank == int(rank):
        real = Trainer.train_step

        def train_step(self):
            if self.state.step == int(step):
                if kind == "raise":
                    raise RuntimeError(f"injected failure at step {step}")
                if kind == "sleep":
                    time.sleep(60)
                os.kill(os.getpid(), signal.SIGINT)
            return real(self)
        Trainer.train_step = train_step

sys.exit(cli.main(sys.argv[1:]))
