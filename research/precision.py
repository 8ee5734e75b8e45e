"""`--precision=auto`: the mixed-precision policy that fits this machine's hardware.

bfloat16 only pays where the hardware computes it faster than float32: on CPUs, AMX's
tiles (about 3.5x float32 for the fast recipe's step). AVX512_BF16 alone computes it
natively but, in TensorFlow 2.21's oneDNN kernels, slower than float32 (a 2-core Xeon
with avx512_bf16 and no AMX: matmuls at 0.5-0.8x, the fast recipe's step at 0.58x), and
without either the bf16 convolutions fall back to kernels 6-12x slower (docs/BENCHMARKS.md).
float16 needs a GPU's tensor cores and loss scaling.
"""

from absl import logging

# /proc/cpuinfo flags of native bfloat16 arithmetic on x86 CPUs; of those, the ones that
# make it faster than float32.
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
FAST_BF16_CPU_FLAGS = ("amx_bf16",)
# GPUs from Ampere on (compute capability 8.0) have bf16 tensor cores; older ones fp16.
BF16_GPU_CAPABILITY = (8, 0)


def cpu_flags(path="/proc/cpuinfo"):
  """The first CPU's feature flags (empty where /proc/cpuinfo is missing: not Linux)."""
  try:
    with open(path) as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return frozenset()


def native_bf16_flags(flags=None):
  """The native-bf16 flags this CPU has, in NATIVE_BF16_CPU_FLAGS order."""
  flags = cpu_flags() if flags is None else flags
  return [f for f in NATIVE_BF16_CPU_FLAGS if f in flags]


def bf16_is_fast(native):
  """Whether the native-bf16 flags `native` make bfloat16 faster than float32 (AMX)."""
  return any(f in FAST_BF16_CPU_FLAGS for f in native)


def choose(gpu_capabilities, flags):
  """(policy, reason) for `--precision=auto`.

  Args:
    gpu_capabilities: (major, minor) compute capability of each visible GPU.
    flags: the CPU's feature flags.
  """
  if gpu_capabilities:
    oldest = min(gpu_capabilities)
    name = f"GPU compute capability {oldest[0]}.{oldest[1]}"
    if oldest >= BF16_GPU_CAPABILITY:
      return "mixed_bfloat16", f"{name} has bfloat16 tensor cores"
    return "mixed_float16", f"{name} has float16 but no bfloat16 tensor cores"
  native = native_bf16_flags(flags)
  if bf16_is_fast(native):
    return "mixed_bfloat16", f"the CPU computes bfloat16 natively ({', '.join(native)})"
  if native:
    return "float32", (f"the CPU computes bfloat16 natively ({', '.join(native)}) but "
                       "without AMX, slower than float32")
  return "float32", ("the CPU has no native bfloat16 (no " + " or ".join(NATIVE_BF16_CPU_FLAGS)
                     + "): bfloat16 would be several times slower")


def gpu_capabilities():
  """Compute capabilities of the visible GPUs (initializes TensorFlow's devices)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  found = []
  for gpu in tf.config.list_physical_devices("GPU"):
    capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
    found.append(tuple(capability) if capability else (0, 0))
  return found


def onednn_enabled():
  """Whether TensorFlow runs its CPU ops with oneDNN's kernels (research/__init__.py
  turns them on unless TF_ENABLE_ONEDNN_OPTS=0)."""
  from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
  return bool(_pywrap_util_port.IsMklEnabled())


def chosen(requested):
  """The policy `requested` runs (as `resolve`, without logging it)."""
  return choose(gpu_capabilities(), cpu_flags())[0] if requested == "auto" else requested


def resolve(requested):
  """The policy to run for `requested` (`auto` or a policy), logging the choice.

  An explicit `mixed_bfloat16` on a CPU-only machine without AMX, or `mixed_float16` on
  one without a GPU (CPUs have no float16 arithmetic units), still runs, with a warning.
  """
  gpus = gpu_capabilities()
  if requested == "auto":
    policy, reason = choose(gpus, cpu_flags())
    logging.info("precision: %s (--precision=auto: %s); oneDNN CPU kernels %s", policy,
                 reason, "on" if onednn_enabled() else "off")
    return policy
  native = native_bf16_flags()
  if requested == "mixed_bfloat16" and not gpus and not native:
    logging.warning("--precision=mixed_bfloat16 on a CPU without native bfloat16 (no %s) "
                    "will be several times slower than float32; use --precision=auto or "
                    "--precision=float32", " or ".join(NATIVE_BF16_CPU_FLAGS))
  elif requested == "mixed_bfloat16" and not gpus and not bf16_is_fast(native):
    logging.warning("--precision=mixed_bfloat16 on a CPU with %s but no AMX will be slower "
                    "than float32; use --precision=auto or --precision=float32",
                    ", ".join(native))
  if requested == "mixed_float16" and not gpus:
    logging.warning("--precision=mixed_float16 without a GPU: the CPU computes float16 "
                    "by converting to and from float32: several times slower than "
                    "float32; use --precision=auto or --precision=float32")
  return requested
