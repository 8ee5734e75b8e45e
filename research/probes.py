"""Probes: values computed inside the compiled step, after the update, summed like metrics.

A probe sees one step whole (`Step`: the batch, the outputs, the gradients summed over
replicas, the weights before and after the update) and returns scalars
`{key: float32 tensor}`. They are added up exactly in the step, over the applied steps
since the last log (a skipped, non-finite step adds nothing), and their means reach
TensorBoard and the console at every `--log_every`: no copy of a weight leaves the
step. `--probes` chooses them (`weight_norm,update_norm` by default: `grad_norm` costs
a second all-reduce of the gradients per step under `mirrored` and `multi_worker`,
where the optimizer's own sum is not at hand).

    @PROBES.register("kernel_norm")
    def kernel_norm():  # The global norm of the convolution kernels after each update.
      return Probe(lambda step: {"kernel_norm": tf.linalg.global_norm(
          [v for v in step.variables if len(v.shape) == 4])})

A probe returning other keys than its own name lists them (`keys(model)`); one that
reads `step.updates` or `step.before` says so (`reads_before`): the step then keeps a
copy of the weights; one that reads `step.grads` costs an all-reduce of the gradients
under `mirrored`.
"""

import dataclasses
import re
from typing import Any, Callable

import tensorflow as tf

from research import metrics as metrics_lib
from research.registry import Registry

PROBES = Registry("probe")


@dataclasses.dataclass
class Step:
  """One replica's view of the step a probe measures, in replica context, after the
  update. Every value is the same on every replica: gradients are summed over them."""
  model: Any
  batch: dict
  outputs: dict
  variables: list        # the trainable variables, after the update
  replica_grads: list    # this replica's share of each gradient (None: not trained)
  before: list = None    # their values before the update (when a probe reads them)
  context: Any = None    # research.context.StepContext of this step

  _grads: list = None    # `grads`, once all-reduced

  @property
  def grads(self):
    """The gradients of the global batch (summed over replicas), loss scale removed."""
    # Cached by hand: functools.cached_property's lock (Python < 3.12) is one for all
    # instances, and would hold one replica's thread out while another all-reduces.
    if self._grads is None:
      present = [g for g in self.replica_grads if g is not None]
      replica = tf.distribute.get_replica_context()
      if present and replica.num_replicas_in_sync > 1:
        present = replica.all_reduce(tf.distribute.ReduceOp.SUM, present)
      present = iter(present)
      self._grads = [None if g is None else next(present) for g in self.replica_grads]
    return self._grads

  @property
  def updates(self):
    """What the step added to each variable (zeros where it was not applied)."""
    return [v - b for v, b in zip(self.variables, self.before)]


@dataclasses.dataclass(frozen=True)
class Probe:
  values: Callable            # (Step) -> {key: scalar tensor}
  keys: Callable = None       # (model) -> [key] `values` returns (None: the probe's name)
  reads_before: bool = False  # reads Step.before or Step.updates: the step keeps a copy


class Probes:
  """Exact sums of every probe's values over the applied steps since `reset`, in
  ON_READ variables like the metrics' (research/metrics.py)."""

  def __init__(self, specs, model):
    self.probes = {}
    for spec in PROBES.parse_list(specs):
      probe = PROBES.build(spec)
      keys = probe.keys(model) if probe.keys else [spec.name]
      self.probes[str(spec)] = (probe, keys)
    self.reads_before = any(probe.reads_before for probe, _ in self.probes.values())
    self.sums = {key: metrics_lib.sum_variable(re.sub(r"\W", "_", key), ())
                 for _, keys in self.probes.values() for key in keys}
    self.steps = metrics_lib.sum_variable("probed_steps", ())

  def add(self, step, applied):
    """Adds this step's values (replica context); `applied`: bool, the step was applied."""
    replica = tf.distribute.get_replica_context()
    weight = applied & tf.equal(replica.replica_id_in_sync_group, 0)  # Every replica
    for item, (probe, keys) in self.probes.items():  # holds the same: the first adds.
      values = probe.values(step)
      if sorted(values) != sorted(keys):
        raise ValueError(f"probe {item} returned {sorted(values)}, not its keys {keys}")
      for key, value in values.items():
        self.sums[key].assign_add(tf.where(weight, tf.cast(value, tf.float32), 0.0))
    self.steps.assign_add(tf.cast(weight, tf.float32))

  def result(self):
    """{key: mean over the applied steps since the last reset} (cross-replica sums)."""
    steps = max(float(self.steps.read_value()), 1.0)
    return {key: float(variable.read_value()) / steps for key, variable in self.sums.items()}

  def variables(self):
    return {re.sub(r"\W", "_", key): v for key, v in self.sums.items()} | {
        "probed_steps": self.steps}

  def reset(self):
    for v in list(self.sums.values()) + [self.steps]:
      v.assign(tf.zeros_like(v))


def layer_of(variable):
  """The layer path of a variable: `resnet8/conv2d_1` of `resnet8/conv2d_1/kernel`."""
  return variable.path.rsplit("/", 1)[0]


@PROBES.register("weight_norm")
def weight_norm():
  """Global norm of the trainable weights after each update."""
  return Probe(lambda step: {"weight_norm": tf.linalg.global_norm(step.variables)})


@PROBES.register("update_norm")
def update_norm():
  """Global norm of each step's update (what the step added to the weights)."""
  return Probe(lambda step: {"update_norm": tf.linalg.global_norm(step.updates)},
               reads_before=True)


@PROBES.register("grad_norm")
def grad_norm():
  """Global norm of the gradient of the global batch (before clipping and lr scales)."""
  return Probe(lambda step: {"grad_norm": tf.linalg.global_norm(
      [g for g in step.grads if g is not None])})
