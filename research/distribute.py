"""tf.distribute strategies by name, and logical CPU devices to test them without GPUs.

Under multi_worker the workers agree at every call boundary (`Agreement`: how many steps
the next call runs, whether to stop), and a worker that vanishes ends the others with
one line naming it (`lost_peer`) instead of a traceback or a hang.
"""

import re

import tensorflow as tf

from research.config import ConfigError

def split_cpu(num_devices):
  """Splits the first CPU into `num_devices` logical devices.

  Must run before TensorFlow initializes its devices (before any op runs).
  """
  if num_devices <= 1:
    return
  cpu = tf.config.list_physical_devices("CPU")[0]
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
  except RuntimeError:  # Already initialized: fine if the split is the one asked for.
    if len(tf.config.list_logical_devices("CPU")) != num_devices:
      raise


def make_strategy(name, cpu_devices=0, cluster_resolver="tf_config", port_base=8888):
  """default | one_device | mirrored | multi_worker.

  mirrored uses every GPU, or else every logical CPU device (see `split_cpu`).
  multi_worker reads the cluster from the TF_CONFIG environment variable, or with
  `cluster_resolver="slurm"` from the Slurm job step's (tasks listen on `port_base`
  and up on each node).
  """
  split_cpu(cpu_devices)
  if name == "multi_worker":  # Must come before anything initializes the runtime.
    try:
      resolver = slurm_resolver(port_base) if cluster_resolver == "slurm" else None
    except RuntimeError as e:  # Not in a Slurm job step.
      raise ConfigError(f"--cluster_resolver=slurm: {e}") from None
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
  gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
  cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else cpus[0])
  if name == "mirrored":
    if gpus:
      return tf.distribute.MirroredStrategy(gpus)
    # NCCL is GPU-only; on CPUs reduce through one device.
    return tf.distribute.MirroredStrategy(
        cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
  raise ValueError(f"unknown strategy {name!r}")


def is_chief(strategy):
  """Whether this process writes files (summaries, configs, the final model)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True
  return resolver.task_type in (None, "chief") or (
      resolver.task_type == "worker" and resolver.task_id == 0
      and "chief" not in resolver.cluster_spec().as_dict())


def slurm_resolver(port_base):
  """TensorFlow's SlurmClusterResolver: the job step's tasks, one worker each."""
  slurm = tf.distribute.cluster_resolver.SlurmClusterResolver
  gpus = len(tf.config.list_physical_devices("GPU"))  # Not nvidia-smi's count.
  if gpus:
    return slurm(port_base=port_base, gpus_per_node=gpus)
  # On CPU-only nodes it would list no task at all (it deals out the node's GPUs): deal
  # out placeholders for the cluster and rank, and say there is no accelerator.
  resolver = slurm(port_base=port_base, gpus_per_node=1024, gpus_per_task=1,
                   auto_set_gpu=False)
  spec = resolver.cluster_spec()
  task_type, task_id = resolver.get_task_info()
  return tf.distribute.cluster_resolver.SimpleClusterResolver(
      spec, task_type=task_type, task_id=task_id, num_accelerators={}, rpc_layer="grpc")


def is_multi_worker(strategy):
  return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


class Agreement:
  """What every worker of a multi-worker run agrees on between calls, so all run calls
  of the same length and stop and save at the same step: one all-gather of two numbers
  each time; elsewhere, the values given."""

  def __init__(self, strategy):
    self.strategy = strategy if is_multi_worker(strategy) else None
    if self.strategy is not None:
      self._gather = tf.function(self._all_gather)

  def _all_gather(self, values):
    gathered = self.strategy.run(
        lambda v: tf.distribute.get_replica_context().all_gather(v[None], axis=0),
        args=(values,))
    return self.strategy.experimental_local_results(gathered)[0]

  def fewest_steps(self, steps):
    """The fewest steps any worker proposes for the next call."""
    return self._gathered(0, steps)[1]

  def largest_signal(self, signal):
    """The largest signal number any worker has received (0: none)."""
    return self._gathered(signal, 0)[0]

  def _gathered(self, signal, steps):
    if self.strategy is None:
      return signal, steps
    values = self._gather(tf.constant([signal, steps], tf.int64)).numpy()
    return int(values[:, 0].max()), int(values[:, 1].min())


LOST_WORKER_EXIT_CODE = 69  # EX_UNAVAILABLE: a peer is gone; rerun every worker.


class LostWorker(RuntimeError):
  """Another worker of the cluster stopped answering; the message names it."""


def lost_peer(error, strategy):
  """A LostWorker naming the peer(s) `error` (a tf.errors.OpError) blames, or None when
  it is not about another worker of `strategy`'s cluster."""
  if not is_multi_worker(strategy):
    return None
  resolver = strategy.cluster_resolver
  me = (resolver.task_type, int(resolver.task_id))
  cluster = resolver.cluster_spec().as_dict()
  blamed = sorted({(job, int(task)) for job, task in
                   re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", error.message)
                   + re.findall(r"/job:(\w+)/task:(\d+)", error.message)} - {me})
  blamed = [(job, task) for job, task in blamed if task < len(cluster.get(job, ()))]
  if not blamed:
    return None
  named = ", ".join(f"{job} {task} ({cluster[job][task]})" for job, task in blamed)
  lines = [line.strip() for line in error.message.splitlines() if line.strip()]
  cause = next((line for line in lines if "/job:" in line), lines[0] if lines else "")
  return LostWorker(f"lost {named}: it stopped answering ({cause[:240]}). The newest "
                    "checkpoint is kept: rerun every worker's command to resume from it")
