"""The learning-rate schedules (the paper's plateau, step, cosine, with warmup) and the
validation tracker that decides the best model and the plateau schedule's reductions."""

import dataclasses
import math

import numpy as np
import tensorflow as tf


def learning_rate_at(config, step, steps_per_epoch, plateau_rate):
    """The learning rate of `step` (0-based). `plateau_rate` is the current rate of the
    plateau schedule, which only epoch ends change."""
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = config.warmup_epochs * steps_per_epoch
    if config.lr_schedule == "plateau":
        rate = plateau_rate
    elif config.lr_schedule == "step":
        rate = config.learning_rate * 0.1 ** (step // steps_per_epoch // config.step_epochs)
    else:
        progress = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
        rate = config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    if warmup_steps and step < warmup_steps:
        rate *= (step + 1) / warmup_steps
    return rate


@dataclasses.dataclass(frozen=True)
class EpochVerdict:
    improved: bool  # a new best validation top-1 error: save the best model
    rate_reduced: bool  # the plateau schedule divided the learning rate


class ValidationTracker:
    """The best validation top-1 error so far and the plateau schedule's state, in
    checkpointed variables. One call per epoch end, `end_epoch`, decides both the best-model
    save (under every schedule) and the plateau schedule's rate reductions."""

    def __init__(self, config):
        self.config = config
        self.rate = tf.Variable(config.learning_rate, dtype=tf.float64, trainable=False)
        self.best_error = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
        self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.reductions = tf.Variable(0, dtype=tf.int64, trainable=False)

    def checkpoint_items(self):
        return dict(
            plateau_rate=self.rate,
            best_error=self.best_error,
            bad_epochs=self.bad_epochs,
            reductions=self.reductions,
        )

    def end_epoch(self, val_top1_error):
        """Records an epoch's validation top-1 error; returns what it changes."""
        if val_top1_error < float(self.best_error.numpy()) - 1e-6:
            self.best_error.assign(val_top1_error)
            self.bad_epochs.assign(0)
            return EpochVerdict(improved=True, rate_reduced=False)
        self.bad_epochs.assign_add(1)
        if (
            self.config.lr_schedule == "plateau"
            and int(self.bad_epochs.numpy()) >= self.config.plateau_patience
            and int(self.reductions.numpy()) < self.config.max_lr_reductions
        ):
            self.rate.assign(float(self.rate.numpy()) * self.config.plateau_factor)
            self.reductions.assign_add(1)
            self.bad_epochs.assign(0)
            return EpochVerdict(improved=False, rate_reduced=True)
        return EpochVerdict(improved=False, rate_reduced=False)
