"""Measures what each hook costs: one short synthetic run per hook, plus one without.

  python scripts/hook_overhead.py --steps=300 --model=resnet20

Each hook's callbacks are timed through a wrapper hook registered as `timed_<name>`,
so the table gives seconds per call as well as the run's wall time against the
baseline. Prints a markdown table (the one in docs/TENSORBOARD.md).
"""

import dataclasses
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from research import hooks  # noqa: E402  (no TensorFlow: loop and plugins load it, in main)
from research.registry import split_list  # noqa: E402
from research.config import Config  # noqa: E402
from scripts import cli  # noqa: E402

HOOK_NAMES = ("train_images", "predictions", "histograms", "hparams", "profile",
              "model_summary")
flags.DEFINE_integer("steps", 300, "training steps of each run")
flags.DEFINE_string("model", "resnet20", "model of every run")
flags.DEFINE_integer("batch_size", 32, "examples per step")
flags.DEFINE_integer("eval_every", 100, "steps between evaluations")
flags.DEFINE_string("hooks", ",".join(HOOK_NAMES),
                    "hook items, e.g. 'histograms(every=500),predictions'")
FLAGS = flags.FLAGS


def register_timed(name, spec, seconds, calls):
  """Registers `timed_<name>`: hook `spec` with each callback's time added to `seconds`."""
  def timed(fn):
    def call(ctx):
      began = time.perf_counter()
      fn(ctx)
      seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - began
      calls[name] = calls.get(name, 0) + 1
    return call

  def build(config):
    hook = hooks.HOOKS.build(spec, config)
    wrapped = {e: timed(getattr(hook, e)) for e in hooks.EVENTS if getattr(hook, e)}
    return dataclasses.replace(hook, **wrapped)  # Same cadence and eval metrics, timed.

  hooks.HOOKS.register(f"timed_{name}")(build)


def timed_run(config):
  from research import loop  # pylint: disable=g-import-not-at-top
  began = time.perf_counter()
  loop.train(config)
  return time.perf_counter() - began


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
  from research import plugins, startup  # pylint: disable=g-import-not-at-top
  startup.import_tensorflow()  # Without its start-up noise before the script's lines.
  args = FLAGS
  plugins.load()
  seconds, calls = {}, {}
  specs = {hooks.HOOKS.parse(item).name: item for item in split_list(args.hooks)}
  names = list(specs)
  for name, spec in specs.items():
    register_timed(name, spec, seconds, calls)
  root = tempfile.mkdtemp(prefix="hook_overhead_")
  base = Config(dataset="synthetic", synthetic_examples=2048, model=args.model,
                batch_size=args.batch_size, train_steps=args.steps,
                eval_every=args.eval_every, log_every=50, precision="float32", hooks="none")
  timed_run(base.replace(model_dir=os.path.join(root, "warmup"), train_steps=20))
  baseline = timed_run(base.replace(model_dir=os.path.join(root, "none")).validate())
  print(f"{args.model}, batch {args.batch_size}, {args.steps} steps, evals every "
        f"{args.eval_every}: no hooks {baseline:.1f} s "
        f"({1e3 * baseline / args.steps:.0f} ms/step)\n")
  print("| hook | calls | s per call | s in hook | run s | vs no hooks |")
  print("| --- | ---: | ---: | ---: | ---: | ---: |")
  for name in names:
    config = base.replace(model_dir=os.path.join(root, name), hooks=f"timed_{name}")
    wall = timed_run(config.validate())
    n, spent = calls.get(name, 0), seconds.get(name, 0.0)
    print(f"| {name} | {n} | {spent / max(n, 1):.2f} | {spent:.1f} | {wall:.1f} | "
          f"{100 * (wall - baseline) / baseline:+.0f}% |", flush=True)


if __name__ == "__main__":
  cli.run(main)
