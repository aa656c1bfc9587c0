"""The training application: data, optimizers, schedules, checkpoints, sampling and
the trainer."""
