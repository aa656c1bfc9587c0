"""The module paths of earlier releases (rnn_gpu.train, rnn_gpu.data, ...) still give the
names they gave, now defined in rnn_gpu.lm."""
from __future__ import annotations

import importlib

import pytest

OLD = {
    "train": ["TrainConfig", "Trainer", "TrainResult", "evaluate", "perplexity", "plot_history",
              "DEFAULT_CHECKPOINT", "DEFAULT_TIME_BUDGET", "RESUME_FIXED", "INPUT_INITS"],
    "data": ["load_corpus", "Vocab", "Corpus", "batchify", "iter_chunks", "get_chunk", "n_chunks",
             "check_trainable", "read_text", "split_text", "tokenize", "default_corpus",
             "corpus_summary", "LEVELS", "EOS", "UNK"],
    "optim": ["SGD", "Adagrad", "Adam", "Optimizer", "clip_grad_norm", "global_norm",
              "make_optimizer", "OPTIMIZERS", "DEFAULT_LR"],
    "schedule": ["Schedule", "Plateau", "Mikolov", "Cosine", "Decision", "make_schedule",
                 "SCHEDULES"],
    "sample": ["sample", "draw", "probabilities"],
    "checkpoint": ["save_checkpoint", "load_checkpoint", "Checkpoint", "build_model",
                   "atomic_write_npz", "FORMAT", "FORMAT_VERSION", "PARAM_NAMES"],
}


@pytest.mark.parametrize("old", sorted(OLD))
def test_old_module_re_exports_the_lm_objects(old):
    mod = importlib.import_module(f"rnn_gpu.{old}")
    lm = importlib.import_module("rnn_gpu.lm")
    sample = importlib.import_module("rnn_gpu.lm.sample").sample  # not exported by rnn_gpu.lm
    for name in OLD[old]:
        new = sample if name == "sample" else getattr(lm, name)
        assert getattr(mod, name) is new, f"rnn_gpu.{old}.{name}"


def test_lm_exports_its_public_names():
    import rnn_gpu.lm as lm

    for name in lm.__all__:
        assert getattr(lm, name) is not None, name
    assert importlib.import_module("rnn_gpu.lm.sample").__name__ == "rnn_gpu.lm.sample"
