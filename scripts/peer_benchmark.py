"""Our training loop against PyTorch on the same cores; see docs/BENCHMARKS.md.

  python scripts/peer_benchmark.py --torch_python=torch-venv/bin/python
  python scripts/peer_benchmark.py --quick --networks=resnet20   # tiny sizes: checks it runs

The same network (airbench94's, the fast recipe's; the CIFAR ResNet-20), batch,
float32 precision and random in-memory data on both sides: ours through the compiled
loop in this process, PyTorch's (scripts/peer_torch.py) in a subprocess run by a python
that has torch, which is not a dependency of this project. Make that python with

  python3 -m venv torch-venv && torch-venv/bin/pip install torch==2.13.0 numpy

The two sides take turns window by window (`--repeats` pairs after one untimed warmup
window each). Prints per network each side's median images/s, the ratio of the
medians, each side's FLOP/s against the measured float32 matmul peak and against the
cores' theoretical peak, then LAST one JSON line.

Exit codes: 0 measured; 1 an error (one `error:` line); 3 skipped, PyTorch not found
(one `skipped:` line saying how to make its environment).
"""

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from scripts import peer_lib  # noqa: E402

flags.DEFINE_list("networks", list(peer_lib.NETWORKS), "networks to compare: "
                  + ", ".join(peer_lib.NETWORKS))
flags.DEFINE_integer("batch_size", None, "images per step on both sides (default: "
                     + ", ".join(f"{n} {d['batch_size']}" for n, d in
                                 peer_lib.NETWORKS.items()) + ")")
flags.DEFINE_integer("steps", None, "training steps per timed window (default: "
                     + ", ".join(f"{n} {d['steps']}" for n, d in
                                 peer_lib.NETWORKS.items()) + ")")
flags.DEFINE_integer("repeats", None, "timed windows per side, taken in turns; medians "
                     "are reported (default 3)")
flags.DEFINE_integer("image_size", None, "pixels per side of the random images (default 32)")
flags.DEFINE_integer("matmul_size", None, "side of the matmul measuring the float32 peak "
                     "(default 4096)")
flags.DEFINE_integer("flops_per_cycle", 0, "float32 FLOPs per cycle per core of the "
                     "theoretical peak (default: 64 with AVX-512, 32 with AVX2 + FMA)")
flags.DEFINE_string("torch_python", "", "a python that imports torch (default: "
                    "$PEER_TORCH_PYTHON, else `python` on the PATH)")
flags.DEFINE_bool("quick", False, "tiny sizes: checks the script runs, measures nothing")
FLAGS = flags.FLAGS

SKIPPED = 3  # Exit code when PyTorch is not found.
MAKE_TORCH = ("python3 -m venv torch-venv && torch-venv/bin/pip install torch==2.13.0 "
              "numpy, then pass --torch_python=torch-venv/bin/python")


def torch_python():
  """The python to run PyTorch's side with: the flag, the env var, or `python`."""
  return (FLAGS.torch_python or os.environ.get("PEER_TORCH_PYTHON")
          or shutil.which("python") or "python")


def sizes():
  """{network: Sizes} from the flags, checked; exits with one `error:` line if wrong."""
  known = ", ".join(peer_lib.NETWORKS)
  unknown = [n for n in FLAGS.networks if n not in peer_lib.NETWORKS]
  if unknown:
    sys.exit(f"error: --networks: unknown {', '.join(unknown)}; known: {known}")
  if not FLAGS.networks:
    sys.exit(f"error: --networks: name at least one of: {known}")
  for name in ("batch_size", "steps", "repeats", "matmul_size"):
    if FLAGS[name].value is not None and FLAGS[name].value < 1:
      sys.exit(f"error: --{name} must be >= 1, got {FLAGS[name].value}")
  if FLAGS.flops_per_cycle < 0:
    sys.exit(f"error: --flops_per_cycle must be >= 0, got {FLAGS.flops_per_cycle}")
  if FLAGS.image_size is not None and FLAGS.image_size < peer_lib.MIN_IMAGE_SIZE:
    sys.exit(f"error: --image_size must be >= {peer_lib.MIN_IMAGE_SIZE} (airbench's 2x2 "
             f"stem and three 2x2 pools), got {FLAGS.image_size}")
  return {name: peer_lib.Sizes.of(name, FLAGS.quick, batch_size=FLAGS.batch_size,
                                  steps=FLAGS.steps, repeats=FLAGS.repeats,
                                  image_size=FLAGS.image_size)
          for name in FLAGS.networks}


def main(argv):
  if argv[1:]:
    sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
  per_network = sizes()
  python = torch_python()
  version, why = peer_lib.torch_version(python)
  if version is None:
    print(f"skipped: PyTorch not found ({python}: {why}); make its environment with: "
          f"{MAKE_TORCH}", flush=True)
    sys.exit(SKIPPED)
  log = lambda line: print(line, flush=True)
  try:
    summary = peer_lib.run(per_network, python,
                           FLAGS.matmul_size or (64 if FLAGS.quick else 4096),
                           FLAGS.flops_per_cycle, log)
  except peer_lib.PeerError as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    sys.exit("error: interrupted; nothing was written, run it again to measure")
  print(json.dumps(summary))


if __name__ == "__main__":
  app.run(main)
