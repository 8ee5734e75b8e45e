"""The side-by-side of scripts/peer_benchmark.py: sizes, PyTorch's side in a
subprocess, the cores' theoretical peak, and one network's comparison.

TensorFlow loads only when a comparison runs (through scripts/benchmark_lib.py, whose
timing and FLOP counts this reuses), so a skip and the CPU's description need none.
"""

import dataclasses
import functools
import json
import os
import re
import subprocess
import tempfile

from research import precision as precision_lib

# Default sizes per network: airbench at the batch of the fast recipe (and of the
# first measurement in issue 35), windows of about 20 s on 2 cores; resnet20's (about
# 0.25 training GFLOP an image against airbench's 0.71) about 10 s.
NETWORKS = {"airbench": {"batch_size": 1024, "steps": 3},
            "resnet20": {"batch_size": 512, "steps": 5}}
DEFAULTS = {"repeats": 3, "image_size": 32}
QUICK = {"batch_size": 8, "steps": 2, "repeats": 3, "image_size": 16}
MIN_IMAGE_SIZE = 9  # airbench's 2x2 valid stem then three 2x2 pools leave 1 pixel.
PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_torch.py")


class PeerError(Exception):
  """PyTorch's side failed; the message says how."""


@dataclasses.dataclass(frozen=True)
class Sizes:
  """One network's comparison: images per step, steps per window, windows per side."""
  network: str
  batch_size: int
  steps: int
  repeats: int
  image_size: int

  @classmethod
  def of(cls, network, quick=False, **overrides):
    """The network's defaults (QUICK's with `quick`), then the overrides not None."""
    values = {**NETWORKS[network], **DEFAULTS, **(QUICK if quick else {})}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(network=network, **values)


def torch_version(python):
  """(torch's version, None) if `python` imports torch, else (None, why not)."""
  try:
    result = subprocess.run([python, "-c", "import torch; print(torch.__version__)"],
                            capture_output=True, text=True, timeout=300)
  except (OSError, subprocess.TimeoutExpired) as e:
    return None, str(e)
  if result.returncode:
    lines = result.stderr.strip().splitlines()
    return None, lines[-1] if lines else f"exit code {result.returncode}"
  return result.stdout.strip(), None


class TorchPeer:
  """scripts/peer_torch.py run by `python`, up for one network's comparison.

  `info` is its first line (torch's version, threads, trainable parameters), read
  when first asked for: it starts while our side traces its step. `window()` runs one
  window of training steps there and returns its seconds.
  """

  def __init__(self, python, sizes, threads):
    self._stderr = tempfile.TemporaryFile(mode="w+")
    self._process = subprocess.Popen(
        [python, PEER_SCRIPT, f"--network={sizes.network}",
         f"--batch_size={sizes.batch_size}", f"--steps={sizes.steps}",
         f"--image_size={sizes.image_size}", f"--threads={threads}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True)

  @functools.cached_property
  def info(self):
    return self._read()

  def _read(self):
    line = self._process.stdout.readline()
    if not line:
      code = self._process.wait()
      self._stderr.seek(0)
      lines = self._stderr.read().strip().splitlines()
      raise PeerError(f"PyTorch's side ({PEER_SCRIPT}) stopped with exit code {code}: "
                      f"{lines[-1] if lines else 'no message'}")
    return json.loads(line)

  def window(self):
    self.info  # pylint: disable=pointless-statement  (its line comes first)
    try:
      self._process.stdin.write("window\n")
      self._process.stdin.flush()
    except BrokenPipeError:
      pass  # It has stopped: _read says why.
    return self._read()["seconds"]

  def close(self):
    if self._process.stdin:
      try:
        self._process.stdin.close()
      except BrokenPipeError:
        pass
    try:
      self._process.wait(timeout=60)
    except subprocess.TimeoutExpired:
      self._process.kill()
    self._stderr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# --- the cores' theoretical peak ----------------------------------------------------

# float32 FLOPs per cycle per core: vector lanes x 2 (a fused multiply-add) x FMA units.
ISA_FLOPS = (("avx512f", 64, "AVX-512: 16 lanes x 2 (FMA) x 2 FMA units; Xeons with "
              "one 512-bit FMA unit have half"),
             ("avx2", 32, "AVX2 + FMA: 8 lanes x 2 (FMA) x 2 FMA units"))


@dataclasses.dataclass(frozen=True)
class Cpu:
  """What /proc/cpuinfo says of this machine, and its theoretical float32 peak."""
  model: str
  flags: frozenset
  cores: int
  ghz: float
  flops_per_cycle: int
  assumed: str     # where each factor of the peak came from

  @property
  def peak(self):
    return self.cores * self.flops_per_cycle * self.ghz * 1e9

  def native_bf16(self):
    return {f: f in self.flags for f in precision_lib.NATIVE_BF16_CPU_FLAGS}


def _fields(text):
  """{name: [value of each processor]} of /proc/cpuinfo's `name : value` lines."""
  fields = {}
  for line in text.splitlines():
    name, sep, value = line.partition(":")
    if sep:
      fields.setdefault(name.strip(), []).append(value.strip())
  return fields


def read_cpu(text, usable_cpus, flops_per_cycle=0):
  """The Cpu of /proc/cpuinfo's `text` for a process that may use `usable_cpus`
  logical CPUs (physical cores: fewer when `siblings` > `cpu cores`, hyperthreads).
  `flops_per_cycle`: a value to assume instead of the one the flags suggest."""
  fields = _fields(text)
  model = fields.get("model name", ["unknown"])[0]
  flags = frozenset(fields.get("flags", [""])[0].split())
  per_core = (int(fields["siblings"][0]) / int(fields["cpu cores"][0])
              if "siblings" in fields and "cpu cores" in fields else 1)
  cores = max(1, round(usable_cpus / per_core))
  nominal = re.search(r"@\s*([\d.]+)\s*GHz", model)
  if nominal:
    ghz, clock = float(nominal.group(1)), "GHz from the model name"
  else:
    mhz = [float(v) for v in fields.get("cpu MHz", ["0"])]
    ghz, clock = sum(mhz) / len(mhz) / 1000, "GHz from cpu MHz (the clock now)"
  if flops_per_cycle:
    isa = "FLOP/cycle from --flops_per_cycle"
  else:
    flops_per_cycle, isa = next(((f, why) for flag, f, why in ISA_FLOPS if flag in flags
                                 and "fma" in flags), (16, "no FMA: 8 lanes x 2 ports"))
  assumed = (f"{cores} cores x {flops_per_cycle} float32 FLOP/cycle ({isa}) x "
             f"{ghz:.2f} {clock}")
  return Cpu(model, flags, cores, ghz, flops_per_cycle, assumed)


def this_cpu(flops_per_cycle=0):
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
  except OSError:
    text = ""
  return read_cpu(text, len(os.sched_getaffinity(0)), flops_per_cycle)


# --- the comparison ---------------------------------------------------------------


def _our_config(bench, sizes):
  """Our config of the network: the fast recipe's for airbench, float32; the same
  label-smoothed loss as PyTorch's side for the ResNet."""
  settings = bench.Settings(image_size=sizes.image_size, airbench_batch_size=sizes.batch_size,
                            airbench_steps=sizes.steps)
  if sizes.network == "airbench":
    return bench.airbench_config(settings, "float32")
  return bench.make_config(settings, sizes.network, sizes.batch_size, sizes.steps,
                           "float32", loss="cross_entropy(label_smoothing=0.2)")


def compare(sizes, python, threads):
  """{"ours", "pytorch"} median images/s of one network, windows taken in turns, their
  ratio, FLOPs per image and PyTorch's version. Refuses networks that differ."""
  from scripts import benchmark_lib as bench  # pylint: disable=g-import-not-at-top
  from research import models  # pylint: disable=g-import-not-at-top
  config = _our_config(bench, sizes)
  ours = sum(int(w.numpy().size) for w in models.build(config).trainable_weights)
  dataset = bench.in_memory_dataset(sizes.batch_size, sizes.image_size)
  with TorchPeer(python, sizes, threads) as peer:
    rates = bench.interleaved_rates({"ours": bench.loop_window(config, dataset),
                                     "pytorch": peer.window},
                                    sizes.steps * sizes.batch_size, sizes.repeats)
  if peer.info["trainable"] != ours:
    raise PeerError(f"{sizes.network}: PyTorch's network has {peer.info['trainable']} "
                    f"trainable parameters, ours {ours}: they are not the same network")
  return dict(rates, ratio=rates["ours"] / rates["pytorch"], torch=peer.info["torch"],
              flops_per_image=bench.training_flops_per_image(config))


def _share(flops, peak):
  return f"{flops / peak:.0%}" if peak else "unknown"


def network_table(sizes, row, matmul_peak, cpu):
  """A markdown table of one network's comparison."""
  ours, torch = (row[s] * row["flops_per_image"] for s in ("ours", "pytorch"))
  lines = [f"| {sizes.network}, float32, batch {sizes.batch_size}, {sizes.steps} steps "
           f"a window | ours (compiled loop) | PyTorch {row['torch']} (eager) |",
           "| --- | ---: | ---: |",
           f"| images/s, median of {sizes.repeats} windows | {row['ours']:.1f} | "
           f"{row['pytorch']:.1f} |",
           f"| training GFLOP/s ({row['flops_per_image'] / 1e9:.3f} GFLOP an image) | "
           f"{ours / 1e9:.1f} | {torch / 1e9:.1f} |",
           f"| of the measured float32 matmul peak, {matmul_peak / 1e9:.1f} GFLOP/s | "
           f"{_share(ours, matmul_peak)} | {_share(torch, matmul_peak)} |",
           f"| of the theoretical peak, {cpu.peak / 1e9:.1f} GFLOP/s | "
           f"{_share(ours, cpu.peak)} | {_share(torch, cpu.peak)} |",
           f"| **ours / PyTorch, ratio of the medians** | **{row['ratio']:.3f}x** | |"]
  return "\n".join(lines)


def _summary_row(sizes, row, matmul_peak, cpu):
  flops = {s: row[s] * row["flops_per_image"] for s in ("ours", "pytorch")}
  out = {"batch_size": sizes.batch_size, "steps": sizes.steps, "repeats": sizes.repeats,
         "image_size": sizes.image_size, "ratio": round(row["ratio"], 4),
         "gflops_per_image": round(row["flops_per_image"] / 1e9, 4)}
  for side, value in flops.items():
    out[f"{side}_images_per_s"] = round(row[side], 2)
    out[f"{side}_of_matmul_peak"] = round(value / matmul_peak, 4)
    out[f"{side}_of_theoretical_peak"] = round(value / cpu.peak, 4) if cpu.peak else None
  return out


def run(per_network, python, matmul_size, flops_per_cycle=0, log=print):
  """Compares each network of `per_network` ({name: Sizes}); returns the JSON summary."""
  from scripts import benchmark_lib as bench  # pylint: disable=g-import-not-at-top
  from research import plugins  # pylint: disable=g-import-not-at-top
  plugins.load()
  cpu, threads = this_cpu(flops_per_cycle), len(os.sched_getaffinity(0))
  bf16 = cpu.native_bf16()
  flags_line = ", ".join(f"{flag} {'yes' if has else 'no'}" for flag, has in bf16.items())
  log(f"CPU: {cpu.model}; {flags_line}")
  log(f"theoretical float32 peak {cpu.peak / 1e9:.1f} GFLOP/s: {cpu.assumed}")
  matmul_peak = bench.peak_matmul_flops(matmul_size, "float32", 3)
  log(f"measured float32 matmul peak ({matmul_size}^2, TensorFlow): "
      f"{matmul_peak / 1e9:.1f} GFLOP/s; {threads} threads on each side")
  summary = {"cpu": cpu.model, **bf16, "cores": cpu.cores, "threads": threads,
             "theoretical_peak_gflops": round(cpu.peak / 1e9, 1),
             "theoretical_peak_assumed": cpu.assumed,
             "matmul_peak_gflops": round(matmul_peak / 1e9, 1),
             "ratio_is": "ours / PyTorch, ratio of the median images/s", "networks": {}}
  for name, sizes in per_network.items():
    log(f"{name}: {sizes.repeats} windows of {sizes.steps} steps on each side, in turns")
    row = compare(sizes, python, threads)
    log(network_table(sizes, row, matmul_peak, cpu))
    summary["torch"] = row["torch"]
    summary["networks"][name] = _summary_row(sizes, row, matmul_peak, cpu)
  summary["min_ratio"] = min(n["ratio"] for n in summary["networks"].values())
  return summary
