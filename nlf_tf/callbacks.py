"""Keras callbacks of a training run: TensorBoard summaries, checkpoints, step recording.

All of them count in micro-steps through the trainer's `train_counter` and report optimizer
steps (`adjusted step` = micro-step // grad_accum_steps), like the original.
"""

import collections
import time

import keras
import numpy as np
import tensorflow as tf


def _to_float(value):
    return float(np.asarray(value, dtype=np.float64))


class TensorBoardLogger(keras.callbacks.Callback):
    """Writes every logged scalar (averaged over the last `log_period` optimizer steps), the
    optimizer steps per second, and every `image_period` steps an image of a few training
    crops with GT (green) and predicted (red) points."""

    def __init__(self, trainer, logdir, log_period=10, image_period=200, summary_batch=None,
                 comment=None, max_images=4, skip_counter=None):
        super().__init__()
        self.trainer = trainer
        self.writer = tf.summary.create_file_writer(logdir)
        self.log_period = max(1, int(log_period))
        self.image_period = int(image_period or 0)
        self.summary_batch = summary_batch
        self.comment = comment
        self.max_images = max_images
        # Bad input records skipped by the data pipeline so far, per category (int64 [4]).
        self.skip_counter = skip_counter
        self._sums = collections.defaultdict(float)
        self._counts = collections.defaultdict(int)
        self._last_time = None
        self._last_step = None

    def on_train_begin(self, logs=None):
        self._last_time = time.perf_counter()
        self._last_step = self._adjusted_step()
        if self.comment:
            with self.writer.as_default():
                tf.summary.text('comment', self.comment, step=self._last_step)

    def _adjusted_step(self):
        return int(self.trainer.train_counter.numpy()) // self.trainer.grad_accum_steps

    def on_train_batch_end(self, batch, logs=None):
        for name, value in (logs or {}).items():
            self._sums[name] += _to_float(value)
            self._counts[name] += 1
        counter = int(self.trainer.train_counter.numpy())
        if counter % self.trainer.grad_accum_steps != 0:
            return  # in the middle of an accumulation group
        step = counter // self.trainer.grad_accum_steps
        if step % self.log_period == 0:
            self._write_scalars(step)
        if self.image_period and self.summary_batch is not None and step % self.image_period == 0:
            self.write_images(step)

    def _write_scalars(self, step):
        now = time.perf_counter()
        with self.writer.as_default():
            for name in sorted(self._sums):
                tf.summary.scalar(name, self._sums[name] / self._counts[name], step=step)
            if self.skip_counter is not None:
                counts = np.asarray(self.skip_counter.numpy())
                for category, count in zip(('param', 'kp3d', 'dense', 'kp2d'), counts):
                    tf.summary.scalar(f'skipped_records_{category}', float(count), step=step)
            if self._last_step is not None and step > self._last_step:
                tf.summary.scalar(
                    'steps_per_sec', (step - self._last_step) / max(now - self._last_time, 1e-9),
                    step=step)
        self.writer.flush()
        self._sums.clear()
        self._counts.clear()
        self._last_time = now
        self._last_step = step

    def write_images(self, step):
        image, gt2d, pred2d, valid = self.trainer.predict_batch_for_summary(self.summary_batch)
        n = min(self.max_images, int(image.shape[0]))
        drawn = np.stack([
            draw_points(np.asarray(image[i]), np.asarray(gt2d[i]), np.asarray(pred2d[i]),
                        np.asarray(valid[i])) for i in range(n)])
        with self.writer.as_default():
            tf.summary.image('train_crops', drawn, step=step, max_outputs=n)
        self.writer.flush()

    def on_train_end(self, logs=None):
        counter = int(self.trainer.train_counter.numpy())
        if self._counts and counter % self.trainer.grad_accum_steps == 0:
            self._write_scalars(counter // self.trainer.grad_accum_steps)
        self.writer.flush()


def draw_points(image, gt2d, pred2d, valid, radius=1):
    """Returns a copy of `image` (H, W, 3 in [0, 1]) with valid GT points as green and the
    corresponding predictions as red squares."""
    image = np.clip(np.array(image, dtype=np.float32), 0, 1)
    height, width = image.shape[:2]
    for points, colour in ((gt2d, (0, 1, 0)), (pred2d, (1, 0, 0))):
        for (x, y), ok in zip(points, valid):
            if not ok or not np.isfinite(x) or not np.isfinite(y):
                continue
            xi, yi = int(round(x)), int(round(y))
            x0, x1 = max(xi - radius, 0), min(xi + radius + 1, width)
            y0, y1 = max(yi - radius, 0), min(yi + radius + 1, height)
            if x0 < x1 and y0 < y1:
                image[y0:y1, x0:x1] = colour
    return image


class CheckpointSaver(keras.callbacks.Callback):
    """Saves through a `tf.train.CheckpointManager` every `period` micro-steps and at the end.

    The checkpoint number is the micro-step counter, like the original's `ckpt-<N>`.
    """

    def __init__(self, trainer, manager, period):
        super().__init__()
        self.trainer = trainer
        self.manager = manager
        self.period = max(1, int(period))
        self.last_saved = None

    def on_train_begin(self, logs=None):
        self.last_saved = int(self.trainer.train_counter.numpy())

    def on_train_batch_end(self, batch, logs=None):
        counter = int(self.trainer.train_counter.numpy())
        if counter - self.last_saved >= self.period:
            self.save(counter)

    def on_train_end(self, logs=None):
        counter = int(self.trainer.train_counter.numpy())
        if counter != self.last_saved:
            self.save(counter)

    def save(self, counter):
        self.manager.save(checkpoint_number=counter)
        self.last_saved = counter


class StepRecorder(keras.callbacks.Callback):
    """Keeps the logs of every micro-step as floats, keyed by the micro-step index (used by
    tests and notebooks). The trainer is the model that `fit` runs."""

    def __init__(self):
        super().__init__()
        self.steps = []
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(int(self.model.train_counter.numpy()) - 1)
        self.logs.append({k: _to_float(v) for k, v in (logs or {}).items()})


class ProgressPrinter(keras.callbacks.Callback):
    """One concise line every `period` optimizer steps: step, the main losses and errors
    (averaged over the period), steps per second and the remaining time."""

    KEYS = ('loss', 'mean_error', 'mean_error_kp', 'mean_error_px_2d', 'learning_rate')

    def __init__(self, trainer, total_steps, period=50, print_fn=print):
        super().__init__()
        self.trainer = trainer
        self.total_steps = int(total_steps)
        self.period = max(1, int(period))
        self.print_fn = print_fn
        self._sums = collections.defaultdict(float)
        self._count = 0
        self._last = None

    def on_train_begin(self, logs=None):
        self._last = (time.perf_counter(), self._step())

    def _step(self):
        return int(self.trainer.train_counter.numpy()) // self.trainer.grad_accum_steps

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        for key in self.KEYS:
            if key in logs:
                self._sums[key] += _to_float(logs[key])
        self._count += 1
        counter = int(self.trainer.train_counter.numpy())
        step = counter // self.trainer.grad_accum_steps
        if counter % self.trainer.grad_accum_steps or (
                step % self.period and step != self.total_steps):
            return
        now = time.perf_counter()
        rate = (step - self._last[1]) / max(now - self._last[0], 1e-9)
        remaining = (self.total_steps - step) / rate if rate > 0 else float('nan')
        values = ' '.join(
            f'{k}={self._sums[k] / self._count:.4g}' for k in self.KEYS if k in self._sums)
        self.print_fn(f'step {step}/{self.total_steps} {values} '
                      f'({rate:.2f} steps/s, {remaining / 60:.1f} min left)')
        self._sums.clear()
        self._count = 0
        self._last = (now, step)
