import numpy as np
import tensorflow as tf

from research import augment, loop


def _batch(n):
  label = tf.range(n) % 10
  return {"image": tf.zeros([n, 4, 4, 3]), "label": label, "target": tf.one_hot(label, 10),
          "index": tf.range(n)}


def _noisy(rate, step, n=4000):
  op = augment.AUGMENTATIONS.build(f"label_noise(rate={rate})")
  step = tf.constant(step, tf.int64)
  return op(_batch(n), tf.stack([tf.constant(3, tf.int64), step]),
            augment.Context(3, step, step, batch_size=n))


def test_about_rate_of_the_targets_change_and_labels_stay():
  out = _noisy(0.3, 1)
  changed = np.argmax(out["target"], -1) != out["label"].numpy()
  # A replaced target keeps its class with probability 1/10: 0.3 * 0.9 change.
  assert abs(changed.mean() - 0.27) < 0.03
  np.testing.assert_array_equal(out["label"], _batch(4000)["label"])
  np.testing.assert_allclose(out["target"].numpy().sum(-1), 1.0)


def test_reproducible_per_step_and_off_at_rate_zero():
  np.testing.assert_array_equal(_noisy(0.3, 5)["target"], _noisy(0.3, 5)["target"])
  assert not np.array_equal(_noisy(0.3, 5)["target"], _noisy(0.3, 6)["target"])
  np.testing.assert_array_equal(_noisy(0.0, 5)["target"], _batch(4000)["target"])


def test_trains_from_the_flag(make_config):
  history = loop.train(make_config(augment="crop,label_noise(rate=0.2)")).train_history
  assert np.isfinite(history[-1][1]["loss"])
