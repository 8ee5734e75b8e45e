"""A run's memory footprint against the memory this machine has available.

An --image_size or --batch_size that cannot fit is refused with one line that names the
memory it needs, before anything is built: TensorFlow would otherwise fail in the
middle of start-up with an out-of-memory traceback (or the kernel would kill the
process). Both estimates are lower bounds, so a run that fits is never refused:

- the batch (before TensorFlow loads): one float32 batch of images, training or
  evaluation, whichever is larger;
- the model (once built): the outputs of its convolutions for one training batch,
  which the step keeps for the gradients (BatchNorm, ReLU and pooling need them).

No module here imports TensorFlow: research.config calls `batch_error` before it loads.
"""

import math
import os

FLOAT32_BYTES = 4


def available_memory():
  """Bytes of memory available to this process: MemAvailable, or else all of it."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def size_text(num_bytes):
  """`num_bytes` for a person: 512.0 MB, 22.9 GB, 240.0 TB."""
  for unit, scale in (("TB", 1e12), ("GB", 1e9)):
    if num_bytes >= scale:
      return f"{num_bytes / scale:.1f} {unit}"
  return f"{num_bytes / 1e6:.1f} MB"


def batch_error(config, available=None):
  """Why one float32 batch of `config`'s images cannot fit in memory, or None."""
  flag = "eval_batch_size" if config.global_eval_batch_size > config.batch_size else (
      "batch_size")
  per_image = config.image_size ** 2 * 3 * FLOAT32_BYTES
  return _error(config, flag, "one float32 batch of its images alone takes", per_image,
                available)


def activations_error(config, model, batch, available=None):
  """Why the activations of `model` (built) for a training batch of `batch` images
  cannot fit in memory, or None. Computed in config.precision's dtype."""
  per_image = conv_outputs(model) * (2 if config.precision.startswith("mixed") else 4)
  return _error(config.replace(batch_size=batch), "batch_size", "the model's activations "
                "in a training step (the outputs of its convolutions, kept for the "
                "gradients) take", per_image, available)


def _error(config, flag, what, per_image, available):
  """Why --`flag` images of `per_image` bytes each cannot fit in memory, or None."""
  available = available_memory() if available is None else available
  batch = getattr(config, flag)
  needed = batch * per_image
  if needed <= available:
    return None
  fits = available // per_image
  lower = (f"lower --{flag} (at most {fits} could fit) or --image_size" if fits else
           "lower --image_size")
  return (f"--image_size={config.image_size} with --{flag}={batch}: {what} at least "
          f"{size_text(needed)}, more than the {size_text(available)} of memory "
          f"available; {lower}")


def conv_outputs(model):
  """Values in the outputs of `model`'s convolutions for one image; nested models are
  counted through."""
  from keras import layers  # pylint: disable=g-import-not-at-top
  convolutions = (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D)
  total = 0
  for layer in model.layers:
    if hasattr(layer, "layers"):
      total += conv_outputs(layer)
    elif isinstance(layer, convolutions):
      total += math.prod(layer.output.shape[1:])
  return total
