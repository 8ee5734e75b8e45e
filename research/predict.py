"""The one prediction path: model outputs, test-time augmentation, probabilities.

The loop's evaluation, scripts/evaluate.py, the TensorBoard hooks and plot_run all
predict through here, with the run's `--tta` and the weights that are evaluated and
saved, so a run is scored the same way everywhere.
"""

import numpy as np
import tensorflow as tf

from research import models


class NonFiniteError(Exception):
  """A model whose outputs are NaN or infinite: the message says on how many images."""


def non_finite_rows(probabilities):
  """Bool [N]: which rows of `probabilities` hold a NaN or an infinity."""
  return ~np.all(np.isfinite(probabilities), axis=-1)


def require_finite(probabilities, what="the model"):
  """Raises NonFiniteError unless every one of `probabilities` is finite."""
  bad = int(np.sum(non_finite_rows(probabilities)))
  if bad:
    raise NonFiniteError(
        f"{what}'s outputs are not finite (NaN or inf) on {bad} of {len(probabilities)} "
        "images: its weights are not finite or overflow, as after a diverged run; retrain "
        "it with a lower --learning_rate or with --on_nan=rollback")


def outputs(model, images, training=False):
  """The model's outputs as a dict whose `logits` are float32.

  A model returns logits, or a dict of outputs with `logits` among them (an auxiliary
  head, features for a distillation loss). Images of another size than the model's
  input (the low-res phase of --low_res_epochs) go through its copy at their size.
  """
  out = models.at_image_size(model, images.shape[1])(images, training=training)
  if not isinstance(out, dict):
    out = {"logits": out}
  return {**out, "logits": tf.cast(out["logits"], tf.float32)}


def _flip(images):
  return tf.reverse(images, axis=[2])


def _shift(images, pixels):
  """Translates by `pixels` down and right (negative: up and left), reflect-padded."""
  pad = abs(pixels)
  padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
  start = pad - pixels
  return padded[:, start:start + images.shape[1], start:start + images.shape[2], :]


def predict(model, images, tta="none"):
  """Outputs of `model` (inference mode) under TTA `tta` (none|flip|flip_translate).

  The logits are averaged over the views; other outputs are those of the plain view.
  """
  plain = outputs(model, images)
  if tta == "none":
    return plain
  logits = lambda x: outputs(model, x)["logits"]
  mirrored = lambda x, first=None: 0.5 * ((logits(x) if first is None else first)
                                          + logits(_flip(x)))
  averaged = mirrored(images, plain["logits"])
  if tta == "flip_translate":
    # airbench94's level 2: half the weight on the mirrored pair, half on the mirrored
    # pairs of the two 1-pixel diagonal shifts (6 forward passes).
    shifted = 0.5 * (mirrored(_shift(images, 1)) + mirrored(_shift(images, -1)))
    averaged = 0.5 * averaged + 0.5 * shifted
  elif tta != "flip":
    raise ValueError(f"unknown tta {tta!r}")
  return {**plain, "logits": averaged}


def compiled_probabilities(model, tta="none"):
  """`images -> softmax probabilities` of `model` under TTA `tta`, one tf.function: traced
  once per input shape, however many times it is called."""
  return tf.function(
      lambda x: tf.nn.softmax(predict(model, tf.cast(x, tf.float32), tta)["logits"]))


def probabilities(model, images, tta="none", batch_size=250, compiled=None):
  """Softmax probabilities, float32 numpy [N, K], of N > 0 uint8 or float images,
  `batch_size` at a time.

  `compiled`: a `compiled_probabilities(model, tta)` to reuse, for a caller that predicts
  again and again (a hook after every evaluation) and would otherwise trace each time.
  """
  run = compiled or compiled_probabilities(model, tta)
  size, parts = min(batch_size, len(images)), []
  for i in range(0, len(images), size):
    chunk = np.asarray(images[i:i + size])
    short = size - len(chunk)  # The last chunk, padded: every call has one shape, one trace.
    if short:
      chunk = np.concatenate([chunk, np.zeros((short, *chunk.shape[1:]), chunk.dtype)])
    parts.append(run(chunk).numpy()[:size - short])
  return np.concatenate(parts)
