"""What train.py and the scripts do before and while the slow imports: quick offline
checks, argument errors in one line, and TensorFlow imported quietly, its start-up
chatter hidden unless --verbose.

On a CPU-only machine TensorFlow prints, before its logging is set up (so
TF_CPP_MIN_LOG_LEVEL cannot hide them), lines such as `Could not find cuda drivers`
and an E-level `failed call to cuInit ... (303)`; its Python side then logs every
MirroredStrategy all-reduce (`Reduce to ... then broadcast`) and checkpoint shard
(`Sharding callback duration`) at INFO; with oneDNN on it says so and that results
may differ in rounding. None of it is news. `quietly` captures the
process's stderr while TensorFlow imports and finds its devices, and passes on every
line that is not such noise.
"""

import argparse
import contextlib
import logging
import os
import re
import socket
import sys
import tempfile

from research.config import ConfigError

NOISE = re.compile("|".join((
    r"All log messages before absl::InitializeLog\(\) is called",
    r"cudart_stub\.cc.*Could not find cuda drivers",
    r"cuda_(platform|executor|diagnostics)\.cc",
    r"failed call to cuInit",
    r"cpu_feature_guard\.cc",
    r"oneDNN custom operations are on",  # The precision line says so (research/__init__).
    r"^To enable the following instructions",
    r"rebuild TensorFlow with the appropriate compiler flags",
)))


class ArgumentParser(argparse.ArgumentParser):
  """argparse for the scripts that use it, whose errors are one `error:` line (exit 1)
  like train.py's, not a usage line and then the error."""

  def error(self, message):
    sys.exit(f"error: {message} (--help lists the arguments)")


@contextlib.contextmanager
def _captured_stderr():
  """Yields a list that receives, at exit, the lines written to fd 2 meanwhile."""
  lines = []
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield lines
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      lines.extend(capture.read().decode(errors="replace").splitlines())


def import_tensorflow(verbose=False, cpu_devices=0, init_devices=True):
  """Imports TensorFlow (and splits the CPU into `cpu_devices`, which must happen
  before its devices start), hiding the start-up noise unless `verbose`.

  `init_devices=False` leaves the devices alone (MultiWorkerMirroredStrategy must be
  created before they start).
  """
  if verbose:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    return
  with _captured_stderr() as lines:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    # distribute imports TensorFlow: here, inside the capture, not at the top.
    from research import distribute  # pylint: disable=g-import-not-at-top
    if init_devices:
      distribute.split_cpu(cpu_devices)
      tf.config.list_logical_devices()  # Starts the devices: the CUDA probe speaks now.
  for line in lines:
    if not NOISE.search(line):
      print(line, file=sys.stderr)
  # Per-step INFO of tf.distribute and the checkpoint saver; warnings still show.
  logging.getLogger("tensorflow").setLevel(logging.WARNING)
  logging.getLogger("absl").addFilter(
      lambda record: not (record.levelno < logging.WARNING
                          and record.pathname.endswith("functional_saver.py")))


# Where keras.datasets caches each download, and the host it downloads from.
KERAS_CACHE = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
DOWNLOAD_HOST = ("www.cs.toronto.edu", 443)


def check_download(dataset):
  """Raises ConfigError at once (not after importing TensorFlow) when `dataset` must be
  downloaded and its host cannot be reached."""
  if dataset not in KERAS_CACHE:
    return
  home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
  if os.path.isdir(os.path.join(home, "datasets", KERAS_CACHE[dataset])):
    return
  try:
    socket.create_connection(DOWNLOAD_HOST, timeout=5).close()
  except OSError as e:
    raise ConfigError(
        f"--dataset={dataset} must be downloaded from {DOWNLOAD_HOST[0]}, which cannot be "
        f"reached ({e.strerror or e}). Offline, point at a folder of class subfolders "
        "instead: --dataset=folder --data_dir=DIR") from None
