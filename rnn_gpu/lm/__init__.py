"""The training application: corpora (data), optimizers (optim), learning-rate schedules
(schedule), checkpoints (checkpoint), sampling (sample) and the trainer (trainer).

The public names of those modules are importable from here, except ``sample`` (the
function keeps its module's name free: ``from rnn_gpu.lm.sample import sample``)::

    from rnn_gpu.lm import TrainConfig, Trainer
    result = Trainer(TrainConfig(data="input.txt", max_steps=500)).fit()
"""
from __future__ import annotations

from .checkpoint import (
    FORMAT, FORMAT_VERSION, PARAM_NAMES, Checkpoint, atomic_write_npz, build_model,
    load_checkpoint, save_checkpoint,
)
from .data import (
    EOS, LEVELS, UNK, Corpus, Vocab, batchify, check_trainable, corpus_summary, default_corpus,
    get_chunk, iter_chunks, load_corpus, n_chunks, read_text, split_text, tokenize,
)
from .optim import (
    DEFAULT_LR, OPTIMIZERS, SGD, Adagrad, Adam, Optimizer, clip_grad_norm, global_norm,
    make_optimizer,
)
from .sample import draw, probabilities
from .schedule import SCHEDULES, Cosine, Decision, Mikolov, Plateau, Schedule, make_schedule
from .config import (
    DEFAULT_CHECKPOINT, DEFAULT_TIME_BUDGET, INPUT_INITS, RESUME_FIXED, TrainConfig,
)
from .metrics import evaluate, perplexity
from .report import plot_history
from .state import RunState
from .stopping import Stopping
from .trainer import Trainer, TrainResult

__all__ = [
    "FORMAT", "FORMAT_VERSION", "PARAM_NAMES", "Checkpoint", "atomic_write_npz", "build_model",
    "load_checkpoint", "save_checkpoint",
    "EOS", "LEVELS", "UNK", "Corpus", "Vocab", "batchify", "check_trainable", "corpus_summary",
    "default_corpus", "get_chunk", "iter_chunks", "load_corpus", "n_chunks", "read_text",
    "split_text", "tokenize",
    "DEFAULT_LR", "OPTIMIZERS", "SGD", "Adagrad", "Adam", "Optimizer", "clip_grad_norm",
    "global_norm", "make_optimizer",
    "draw", "probabilities",
    "SCHEDULES", "Cosine", "Decision", "Mikolov", "Plateau", "Schedule", "make_schedule",
    "DEFAULT_CHECKPOINT", "DEFAULT_TIME_BUDGET", "INPUT_INITS", "RESUME_FIXED", "TrainConfig",
    "Trainer", "TrainResult", "evaluate", "perplexity", "plot_history", "RunState", "Stopping",
]
