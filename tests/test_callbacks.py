import numpy as np
import tensorflow as tf

from nlf_tf import callbacks


class _FakeTrainer:
    def __init__(self, accum=1):
        self.train_counter = tf.Variable(0, dtype=tf.int64)
        self.grad_accum_steps = accum


def test_progress_printer_averages_over_the_period():
    trainer = _FakeTrainer(accum=2)
    lines = []
    printer = callbacks.ProgressPrinter(trainer, total_steps=4, period=2, print_fn=lines.append)
    printer.on_train_begin()
    for micro in range(8):
        trainer.train_counter.assign(micro + 1)
        printer.on_train_batch_end(micro, {'loss': float(micro), 'mean_error': 10.0, 'x': 1})
    assert len(lines) == 2
    assert lines[0].startswith('step 2/4 loss=1.5 mean_error=10 ')  # mean of micro-steps 0..3
    assert lines[1].startswith('step 4/4 loss=5.5 ')
    assert 'x=' not in lines[0]


def test_draw_points_marks_valid_points_only():
    image = np.zeros((8, 8, 3), np.float32)
    out = callbacks.draw_points(image, np.array([[2, 2], [6, 6]], np.float32),
                                np.array([[5, 1], [0, 0]], np.float32), np.array([True, False]),
                                radius=0)
    np.testing.assert_array_equal(out[2, 2], [0, 1, 0])
    np.testing.assert_array_equal(out[1, 5], [1, 0, 0])
    assert out[6, 6].sum() == 0 and out[0, 0].sum() == 0
    assert image.sum() == 0  # the input is not modified


class _FakeManager:
    def __init__(self):
        self.saved = []

    def save(self, checkpoint_number):
        self.saved.append(checkpoint_number)


def test_checkpoint_saver_period_and_final_save():
    trainer = _FakeTrainer()
    manager = _FakeManager()
    saver = callbacks.CheckpointSaver(trainer, manager, period=3)
    saver.on_train_begin()
    for micro in range(7):
        trainer.train_counter.assign(micro + 1)
        saver.on_train_batch_end(micro)
    saver.on_train_end()
    assert manager.saved == [3, 6, 7]
