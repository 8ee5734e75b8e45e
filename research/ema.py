"""Averages of a model's weights, evaluated and saved as such: an exponential moving
average (`Ema`) or airbench94's Lookahead (`Lookahead`)."""

import contextlib

import tensorflow as tf


class Ema(tf.Module):
  """EMA of every float weight of a model (BatchNorm statistics included).

  Create under the strategy scope; `update` runs in cross-replica context (the
  compiled step calls it after the optimizer). The decay warms up as
  min(decay, (1 + n) / (10 + n)) so early averages are not dominated by the init.
  """

  def __init__(self, model, decay):
    super().__init__(name="ema")
    self.decay = decay
    self.weights = [w for w in model.weights if "float" in str(w.dtype)]
    self.averages = [tf.Variable(w, trainable=False, name="ema") for w in self.weights]
    self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="ema_updates")

  def reset(self):
    """Restarts the averages from the model's current weights."""
    for average, weight in zip(self.averages, self.weights):
      average.assign(tf.cast(weight.value, average.dtype))

  def update(self):
    n = tf.cast(self.updates, tf.float32)
    decay = tf.minimum(self.decay, (1.0 + n) / (10.0 + n))
    for average, weight in zip(self.averages, self.weights):
      average.assign(decay * average + (1.0 - decay) * tf.cast(weight.value, average.dtype))
    self.updates.assign_add(1)

  @contextlib.contextmanager
  def swapped_in(self):
    """The model holds the averages inside the block, its own weights after it."""
    saved = [tf.identity(w.value) for w in self.weights]
    for w, a in zip(self.weights, self.averages):
      w.assign(a)
    try:
      yield
    finally:
      for w, s in zip(self.weights, saved):
        w.assign(s)


class Lookahead(Ema):
  """Lookahead weights as airbench94 uses them: every `every` steps the slow copy moves
  toward the model's weights, slow = d * slow + (1 - d) * weights, and the model is
  reset to the slow copy. The decay grows as d = decay * (step / total_steps)^3: no
  averaging early, strong averaging late. Evaluated and saved like an EMA (the slow
  copy is what the model holds right after each sync). Syncs count applied updates,
  so steps skipped by `--on_nan=skip` delay them.
  """

  def __init__(self, model, every, decay, total_steps):
    super().__init__(model, decay)
    self.every, self.total_steps = every, max(1, total_steps)

  def update(self):
    self.updates.assign_add(1)
    n = self.updates

    def sync():
      progress = tf.minimum(tf.cast(n, tf.float32) / self.total_steps, 1.0)
      decay = self.decay * progress ** 3
      for average, weight in zip(self.averages, self.weights):
        average.assign(decay * average
                       + (1.0 - decay) * tf.cast(weight.value, average.dtype))
        weight.assign(tf.cast(average, weight.dtype))

    tf.cond(n % self.every == 0, sync, lambda: None)


def build(model, config):
  """The weight averaging the config asks for (`--ema_decay`, `--lookahead_every`),
  or None."""
  if config.lookahead_every:
    return Lookahead(model, config.lookahead_every, config.lookahead_decay,
                     config.train_steps // config.grad_accum_steps)  # In updates.
  if config.ema_decay:
    return Ema(model, config.ema_decay)
  return None
