"""Metrics as exact sums: a registry of summed quantities and what they report.

A metric adds up what it needs over a batch (`sums(outputs, batch, per_example_loss,
mask) -> {key: tensor}`, masked: padding and the examples of skipped steps weigh 0;
`masked_sum` does it for per-example values) and turns the totals over every example
seen into what is reported (`result(sums, examples) -> {name: value}`). `Metrics` keeps
each total in an ON_READ/SUM variable: replicas add locally, and a read outside the
replica sums across them. Figures are exact whatever the batch size, padding or number
of replicas. loss, accuracy and top5 are always on; `--metrics=ece,per_class_accuracy`
adds others, and every scalar a metric reports reaches TensorBoard, the console and the
HParams table (a non-scalar value, such as the confusion matrix, reaches the hooks).

    @METRICS.register("brier")
    def brier(num_classes, class_names):
      def sums(outputs, batch, per_example_loss, mask):
        p = tf.nn.softmax(outputs["logits"])
        return {"sq": masked_sum(tf.reduce_sum((p - batch["target"]) ** 2, -1), mask)}
      return Metric({"sq": ()}, sums, lambda s, n: {"brier": float(s["sq"]) / n})
"""

import dataclasses
import re
from typing import Callable

import numpy as np
import tensorflow as tf

from research.registry import Registry

METRICS = Registry("metric")
CORE = ("loss", "accuracy", "top5")  # Always computed, in this order.


@dataclasses.dataclass(frozen=True)
class Metric:
  shapes: dict    # key -> shape of its total (() for a scalar)
  sums: Callable  # (outputs, batch, per_example_loss, mask) -> {key: masked batch total}
  result: Callable  # ({key: np.ndarray total}, examples) -> {name: float or array}


def masked_sum(value, mask):
  """Sum over the batch of per-example `value` [B, ...] weighted by `mask` [B]."""
  value = tf.cast(value, tf.float32)
  weight = tf.reshape(mask, [-1] + [1] * (len(value.shape) - 1))
  # where, not a product alone: a skipped step's NaN loss times 0 is still NaN.
  return tf.reduce_sum(tf.where(weight > 0, value, 0.0) * weight, axis=0)


def hits(outputs, batch):
  """1.0 where the arg-max of the logits is the label, float32 [B]."""
  guess = tf.argmax(outputs["logits"], -1, output_type=tf.int32)
  return tf.cast(tf.equal(guess, tf.cast(batch["label"], tf.int32)), tf.float32)


def mean(name, per_example):
  """A metric reporting the mean of `per_example(outputs, batch, loss)` as `name`."""
  return Metric({name: ()},
                lambda o, b, l, m: {name: masked_sum(per_example(o, b, l), m)},
                lambda sums, n: {name: float(sums[name]) / n})


@METRICS.register("loss")
def loss(num_classes, class_names):
  """Mean per-example loss."""
  del num_classes, class_names
  return mean("loss", lambda o, b, l: l)


@METRICS.register("accuracy")
def accuracy(num_classes, class_names):
  """Top-1 accuracy against the integer label."""
  del num_classes, class_names
  return mean("accuracy", lambda o, b, l: hits(o, b))


@METRICS.register("top5")
def top5(num_classes, class_names):
  """Top-5 accuracy (top-k with k = the class count when there are fewer than 5)."""
  del class_names
  k = min(5, num_classes)
  return mean("top5", lambda o, b, l: tf.cast(
      tf.math.in_top_k(tf.cast(b["label"], tf.int32), o["logits"], k), tf.float32))


@METRICS.register("confusion_matrix")
def confusion_matrix(num_classes, class_names):
  """Counts of (true class, predicted class): a [K, K] array, for the hooks."""
  del class_names

  def sums(outputs, batch, per_example_loss, mask):
    del per_example_loss
    guess = tf.argmax(outputs["logits"], -1, output_type=tf.int32)
    return {"counts": tf.math.confusion_matrix(
        tf.cast(batch["label"], tf.int32), guess, num_classes, weights=mask,
        dtype=tf.float32)}

  return Metric({"counts": (num_classes, num_classes)}, sums,
                lambda sums, n: {"confusion_matrix": np.rint(sums["counts"]).astype(np.int64)})


def build(specs, num_classes, class_names, extra=()):
  """{spec text: Metric} of the core metrics, the `--metrics` items and `extra` items."""
  items = list(CORE)
  for spec in METRICS.parse_list(specs) + [METRICS.parse(e) for e in extra]:
    if spec.name not in CORE and str(spec) not in items:
      items.append(str(spec))
  return {item: METRICS.build(item, num_classes, class_names) for item in items}


class Metrics:
  """Exact sums of every metric's quantities over the examples seen since `reset`."""

  def __init__(self, metrics):
    self.metrics = metrics
    self.sums = {(item, key): sum_variable(f"{item}_{key}", shape)
                 for item, metric in metrics.items() for key, shape in metric.shapes.items()}
    self.examples = sum_variable("examples", ())

  def update(self, outputs, batch, per_example_loss, mask):
    """Adds a batch (replica context). `mask` float32 [B] weights examples: 0 for
    padding and for the examples of a skipped step."""
    for item, metric in self.metrics.items():
      for key, total in metric.sums(outputs, batch, per_example_loss, mask).items():
        self.sums[(item, key)].assign_add(tf.cast(total, tf.float32))
    self.examples.assign_add(tf.reduce_sum(mask))

  def result(self):
    """{name: value} of every metric (cross-replica sums), and "examples": int."""
    examples = float(self.examples.read_value())
    n = max(examples, 1.0)
    out = {}
    for item, metric in self.metrics.items():
      sums = {key: np.asarray(self.sums[(item, key)].read_value())
              for key in metric.shapes}
      out.update(metric.result(sums, n))
    out["examples"] = int(round(examples))
    return out

  def variables(self):
    """{name: sum variable}, names that say which metric each sum is of."""
    named = {f"{item}.{key}": v for (item, key), v in self.sums.items()}
    return {re.sub(r"\W", "_", name): v for name, v in named.items()} | {
        "examples": self.examples}

  def reset(self):
    for v in list(self.sums.values()) + [self.examples]:
      v.assign(tf.zeros_like(v))


def sum_variable(name, shape):
  return tf.Variable(tf.zeros(shape), trainable=False, name=f"{name}_sum",
                     synchronization=tf.VariableSynchronization.ON_READ,
                     aggregation=tf.VariableAggregation.SUM)
