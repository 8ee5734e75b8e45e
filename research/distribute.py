"""tf.distribute strategies by name, and logical CPU devices to test them without GPUs."""

import tensorflow as tf


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


def make_strategy(name, cpu_devices=0):
  """default | one_device | mirrored | multi_worker.

  mirrored uses every GPU, or else every logical CPU device (see `split_cpu`).
  multi_worker reads the cluster from the TF_CONFIG environment variable.
  """
  split_cpu(cpu_devices)
  if name == "multi_worker":  # Must come before anything initializes the runtime.
    return tf.distribute.MultiWorkerMirroredStrategy()
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
