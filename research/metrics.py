"""Metrics as exact sums: a registry of per-example quantities and what they report.

A metric says which per-example quantities it needs (`quantities(outputs, batch,
per_example_loss) -> {key: [B, ...]}`) and turns their sums over every example seen
into what is reported (`result(sums, examples) -> {name: float}`). `Metrics` keeps each
sum in an ON_READ/SUM variable: replicas add locally (masked: padding and skipped
steps count 0), and a read outside the replica sums across them. Figures are exact
whatever the batch size, padding or number of replicas. loss, accuracy and top5 are
always on; `--metrics=ece,per_class_accuracy` adds others, and every name a metric
reports reaches TensorBoard, the console and the HParams table.

    @METRICS.register("brier")
    def brier(num_classes, class_names):
      return Metric(shapes={"sq": ()},
                    quantities=lambda o, b, l: {"sq": tf.reduce_sum(
                        (tf.nn.softmax(o["logits"]) - b["target"]) ** 2, -1)},
                    result=lambda s, n: {"brier": s["sq"] / n})
"""

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

from research.registry import Registry

METRICS = Registry("metric")
CORE = ("loss", "accuracy", "top5")  # Always computed, in this order.


@dataclasses.dataclass(frozen=True)
class Metric:
  shapes: dict          # key -> shape of one example's quantity (() for a scalar)
  quantities: Callable  # (outputs, batch, per_example_loss) -> {key: [B, *shape]}
  result: Callable      # ({key: np.ndarray sum}, examples) -> {name: float}


def hits(outputs, batch):
  """1.0 where the arg-max of the logits is the label, float32 [B]."""
  guess = tf.argmax(outputs["logits"], -1, output_type=tf.int32)
  return tf.cast(tf.equal(guess, tf.cast(batch["label"], tf.int32)), tf.float32)


def _mean(key):
  return Metric(shapes={key: ()}, quantities=None,
                result=lambda sums, n: {key: float(sums[key]) / n})


@METRICS.register("loss")
def loss(num_classes, class_names):
  """Mean per-example loss."""
  del num_classes, class_names
  return dataclasses.replace(_mean("loss"), quantities=lambda o, b, l: {"loss": l})


@METRICS.register("accuracy")
def accuracy(num_classes, class_names):
  """Top-1 accuracy against the integer label."""
  del num_classes, class_names
  return dataclasses.replace(_mean("accuracy"),
                             quantities=lambda o, b, l: {"accuracy": hits(o, b)})


@METRICS.register("top5")
def top5(num_classes, class_names):
  """Top-5 accuracy (top-k with k = the class count when there are fewer than 5)."""
  del class_names
  k = min(5, num_classes)
  return dataclasses.replace(_mean("top5"), quantities=lambda o, b, l: {"top5": tf.cast(
      tf.math.in_top_k(tf.cast(b["label"], tf.int32), o["logits"], k), tf.float32)})


def build(specs, num_classes, class_names):
  """{spec text: Metric} of the core metrics and the `--metrics` items."""
  items = list(CORE) + [str(s) for s in METRICS.parse_list(specs) if s.name not in CORE]
  return {item: METRICS.build(item, num_classes, class_names) for item in items}


class Metrics:
  """Exact sums of every metric's quantities over the examples seen since `reset`."""

  def __init__(self, metrics):
    self.metrics = metrics
    self.sums = {(item, key): _sum_variable(f"{item}_{key}", shape)
                 for item, metric in metrics.items() for key, shape in metric.shapes.items()}
    self.examples = _sum_variable("examples", ())

  def update(self, outputs, batch, per_example_loss, mask):
    """Adds a batch (replica context). `mask` float32 [B] weights examples: 0 for
    padding and for the examples of a skipped step."""
    for item, metric in self.metrics.items():
      for key, value in metric.quantities(outputs, batch, per_example_loss).items():
        value = tf.cast(value, tf.float32)
        weight = tf.reshape(mask, [-1] + [1] * (len(value.shape) - 1))
        # where, not a product alone: a skipped step's NaN loss times 0 is still NaN.
        self.sums[(item, key)].assign_add(
            tf.reduce_sum(tf.where(weight > 0, value, 0.0) * weight, axis=0))
    self.examples.assign_add(tf.reduce_sum(mask))

  def result(self):
    """{name: float} of every metric (cross-replica sums), and "examples": int."""
    examples = float(self.examples.read_value())
    n = max(examples, 1.0)
    out = {}
    for item, metric in self.metrics.items():
      sums = {key: np.asarray(self.sums[(item, key)].read_value())
              for key in metric.shapes}
      out.update(metric.result(sums, n))
    out["examples"] = int(round(examples))
    return out

  def reset(self):
    for v in list(self.sums.values()) + [self.examples]:
      v.assign(tf.zeros_like(v))


def _sum_variable(name, shape):
  return tf.Variable(tf.zeros(shape), trainable=False, name=f"{name}_sum",
                     synchronization=tf.VariableSynchronization.ON_READ,
                     aggregation=tf.VariableAggregation.SUM)
