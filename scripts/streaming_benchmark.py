"""Peak memory and speed of a folder streamed from its files against the same folder in
memory, and against a smaller folder: the streamed run's memory must not grow with the
data.

  python scripts/streaming_benchmark.py --work_dir=/tmp/streaming [--images=40000]

Generates `--images` JPEGs of `--size` pixels in 10 class folders (once), links the
first `--small` of them as a second folder, then times `train.py` on them at
`--image_size` with a small model: streamed (--data_cache=none) on both folders, and in
memory (--data_cache=memory, the decode timed apart) on the big one. Each run's peak
RSS is its process's own (one child per measuring process). Also measures the JPEG
decode cost per image on one core. Prints a markdown table, then one JSON line.
`--defaults` trains with train.py's own hooks, validation split and evaluation (the
memory a user's run takes); `--noin_memory` leaves out the in-memory run.
"""

import os
import re
import shutil
import subprocess
import sys
import time

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scripts import cli  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", None, "where the folders, caches and runs go", required=True)
flags.DEFINE_integer("images", 40000, "generated JPEGs")
flags.DEFINE_integer("small", 10000, "images of the smaller folder")
flags.DEFINE_integer("size", 128, "their size in pixels")
flags.DEFINE_integer("image_size", 64, "training --image_size")
flags.DEFINE_integer("steps", 300, "training steps of each run")
flags.DEFINE_string("model", "resnet8", "training --model")
flags.DEFINE_integer("batch_size", 128, "training --batch_size")
flags.DEFINE_bool("defaults", False, "train with train.py's own --hooks, --val_split and "
                  "evaluation (else no hooks, 2% held out, no evaluation before the end)")
flags.DEFINE_bool("in_memory", True, "also train on the big folder decoded in memory")

CLASSES = 10


def generate(folder, count, size):
  """`count` JPEGs of `size` px: smooth random colour fields, learnable by class."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if os.path.isdir(folder) and sum(len(f) for _, _, f in os.walk(folder)) == count:
    return
  rng = np.random.default_rng(0)
  ramp = np.linspace(0, 1, size)[None, :, None]
  for i in range(count):
    label = i % CLASSES
    os.makedirs(os.path.join(folder, f"class_{label}"), exist_ok=True)
    base = rng.uniform(0, 255, 3) * 0.5 + 12 * label
    pixels = base + 60 * ramp * ((label % 3) - 1) + rng.normal(0, 20, (size, size, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        os.path.join(folder, f"class_{label}", f"{i:06d}.jpg"), quality=90)


def link_subset(folder, subset, count):
  if os.path.isdir(subset):
    return
  for name in sorted(os.listdir(folder)):
    os.makedirs(os.path.join(subset, name))
    files = sorted(os.listdir(os.path.join(folder, name)))[:count // CLASSES]
    for f in files:
      os.symlink(os.path.join(folder, name, f), os.path.join(subset, name, f))


def measured(command):
  """(seconds, peak RSS bytes, stderr) of `command` run as this process's only child."""
  wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "p = subprocess.run(sys.argv[1:], stderr=subprocess.PIPE, text=True); "
             "sys.stderr.write(p.stderr); print(time.perf_counter() - t, "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode)")
  result = subprocess.run([sys.executable, "-c", wrapper, *command], cwd=ROOT,
                          capture_output=True, text=True)
  seconds, rss_kb, code = result.stdout.split()
  if code != "0":
    raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
  return float(seconds), int(rss_kb) * 1024, result.stderr


def train(folder, cache, model_dir, cache_dir):
  seconds, rss, log = measured([
      sys.executable, "train.py", "--dataset=folder", f"--data_dir={folder}",
      f"--data_cache={cache}", f"--cache_dir={cache_dir}", f"--model_dir={model_dir}",
      f"--image_size={FLAGS.image_size}", f"--model={FLAGS.model}", "--precision=float32",
      f"--batch_size={FLAGS.batch_size}", f"--train_steps={FLAGS.steps}", "--log_every=50",
      "--augment=crop,flip", "--optimizer=sgd", "--learning_rate=0.05",
      *([] if FLAGS.defaults else ["--hooks=none", "--val_split=0.02", "--eval_every=100000"])])
  rates = [float(r) for r in re.findall(r"\| (\d+) img/s \|", log)]
  # The pace of the later windows: the first includes tf.data warming up.
  rates = sorted(rates[1:] or rates)
  return {"seconds": seconds, "peak_rss_gb": rss / 1e9,
          "images_per_second": rates[len(rates) // 2] if rates else float("nan")}


def decode_ms(folder, count=2000):
  """Milliseconds to read and decode one JPEG and resize it, on one core."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from research.sources.images import decode_image  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  paths = [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs][:count]
  decode = tf.function(lambda p: decode_image(tf.io.read_file(p), FLAGS.image_size))
  decode(tf.constant(paths[0]))
  began = time.perf_counter()
  for path in paths:
    decode(tf.constant(path))
  return 1000 * (time.perf_counter() - began) / len(paths)


def share_steps_per_second(folder, steps=40):
  """Steps/s of one of 2 workers' input pipelines on the streamed `folder`: building
  its own half of each batch, against the whole batch (as before sharding)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from research import data  # pylint: disable=g-import-not-at-top
  from research.config import Config  # pylint: disable=g-import-not-at-top
  from research.sources.cache import open_folder  # pylint: disable=g-import-not-at-top
  config = Config(dataset="folder", data_dir=folder, image_size=FLAGS.image_size,
                  data_cache="none", batch_size=2 * FLAGS.batch_size, train_steps=steps + 5,
                  augment="crop,flip", num_classes=CLASSES)
  source, _ = open_folder(folder, config)
  worker = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=0,
                                      num_replicas_in_sync=2)
  rates = {}
  for name, shard in (("own share", True), ("whole batch", False)):
    iterator = iter(data.train_dataset(source, config, 0, worker, shard=shard))
    for _ in range(5):  # Warm-up: tracing, the first files.
      next(iterator)
    began = time.perf_counter()
    for _ in range(steps):
      next(iterator)
    rates[name] = steps / (time.perf_counter() - began)
  return rates


def main(argv):
  del argv
  big = os.path.join(FLAGS.work_dir, f"jpeg{FLAGS.size}_{FLAGS.images}")
  small = os.path.join(FLAGS.work_dir, f"jpeg{FLAGS.size}_{FLAGS.small}")
  generate(big, FLAGS.images, FLAGS.size)
  link_subset(big, small, FLAGS.small)
  cache_dir = os.path.join(FLAGS.work_dir, "cache")
  runs = {}
  plan = [("streamed, small folder", small, "none"), ("streamed, big folder", big, "none")]
  if FLAGS.in_memory:
    plan.append(("in memory, big folder", big, "memory"))
  for name, folder, cache in plan:
    if cache == "memory":  # Decode and cache first, so the run is timed on training alone.
      measured([sys.executable, "-c", "import sys; sys.path.insert(0, '.'); "
                "from research.sources.cache import load_folder; "
                f"load_folder({big!r}, {FLAGS.image_size}, {cache_dir!r})"])
    model_dir = os.path.join(FLAGS.work_dir, "runs", re.sub(r"\W+", "_", name))
    shutil.rmtree(model_dir, ignore_errors=True)  # A fresh run each time, never a resume.
    runs[name] = train(folder, cache, model_dir, cache_dir)
    print(f"{name}: {runs[name]}", flush=True)
  cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
              if l.startswith("model name")), "?")
  result = {
      "cpu": cpu, "images": FLAGS.images, "size": FLAGS.size,
      "image_size": FLAGS.image_size,
      "decoded_gb_at_size": FLAGS.images * FLAGS.size ** 2 * 3 / 1e9,
      "decoded_gb_at_image_size": FLAGS.images * FLAGS.image_size ** 2 * 3 / 1e9,
      "decode_ms_per_image_one_core": decode_ms(big), "runs": runs,
      "worker_pipeline_steps_per_second": share_steps_per_second(big),
      "streamed_rss_big_vs_small": (runs["streamed, big folder"]["peak_rss_gb"]
                                    / runs["streamed, small folder"]["peak_rss_gb"])}
  if FLAGS.in_memory:
    result["streamed_vs_memory_speed"] = (runs["streamed, big folder"]["images_per_second"]
                                          / runs["in memory, big folder"]["images_per_second"])
  print("| run | peak RSS GB | images/s | wall s |\n| --- | ---: | ---: | ---: |")
  for name, run in runs.items():
    print(f"| {name} | {run['peak_rss_gb']:.2f} | {run['images_per_second']:.0f} | "
          f"{run['seconds']:.0f} |")
  shares = result["worker_pipeline_steps_per_second"]
  print(f"one of 2 workers' input pipeline, global batch {2 * FLAGS.batch_size}: "
        + ", ".join(f"{name} {rate:.2f} steps/s" for name, rate in shares.items()))
  print(cli.json_line(result))


if __name__ == "__main__":
  cli.run(main)
