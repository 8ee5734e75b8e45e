"""Trains an image classifier: flags -> validated Config -> research.loop.train.

  python train.py --strategy=mirrored --dataset=folder --data_dir=DIR --model=improved_cnn
  python train.py --flagfile=configs/cifar10_fast.flags --dataset=folder --data_dir=DIR
  python train.py --list=augment       # registered augmentations and their parameters
  python train.py --list=model         # the models, each with its training defaults

Each --model has its own training defaults (optimizer, learning rate, epochs, batch
size, augmentation, ...), taken for every flag the command line and flagfiles do not
set; the defaults shown below are the flags' own, which few models train with.
`--list=model` lists each model's, and a run logs the ones it took and records them in
config.json (`model_defaults`). Every flag is a field of research.config.Config
(`--helpfull` lists them).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keep TensorFlow's C++ chatter out.

from absl import app, flags, logging  # noqa: E402

from research import config as config_lib  # noqa: E402
from research import startup  # noqa: E402

HELP_FLAGS = ("--help", "--helpfull", "--helpshort", "--helpxml", "-h", "-?")


def help_notes():
  """({flag: registered names}, flags that some model's training defaults set), for the
  help text; only when help is asked, because filling the registries imports TensorFlow."""
  if not help_asked(sys.argv):
    return {}, ()
  startup.import_tensorflow()
  from research import models, plugins  # pylint: disable=g-import-not-at-top
  plugins.load()
  return ({flag: registry.names() for flag, (registry, _) in plugins.registries().items()},
          set().union(*models.TRAINING_DEFAULTS.values()))


def help_asked(argv):
  return any(arg.split("=")[0] in HELP_FLAGS for arg in argv[1:])


config_lib.define_flags(flags.FLAGS, *help_notes())
flags.adopt_module_key_flags(config_lib)  # --help shows them, not only --helpfull.
flags.DEFINE_string("list", None, "print the registered items of a flag (model, augment, "
                    "loss, step, metrics, probes, regularizers, hooks, actions, optimizer, "
                    "schedule, param_rules, grad_transforms, dataset; 'all' for every one) "
                    "with their parameters, and each model's training defaults, and exit")
flags.DEFINE_bool("verbose", False, "show TensorFlow's start-up and per-step INFO logs "
                  "(CUDA probes, all-reduces, checkpoint shards), hidden by default")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])} (flags start with --, in "
             "a flagfile too)")
  # Set on the command line or in a flagfile: the model's training defaults fill the rest.
  explicit = config_lib.explicit_fields(FLAGS)
  try:
    config = config_lib.from_flags(FLAGS).validate()  # The core values, in a moment.
    if not FLAGS.list:
      startup.check_download(config.dataset)
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")
  logging.info("loading TensorFlow and the registries")
  startup.import_tensorflow(FLAGS.verbose, config.cpu_devices,
                            init_devices=config.strategy != "multi_worker")
  from research import checkpoints, data, distribute, interrupts, loop, plugins  # pylint: disable=g-import-not-at-top  (slow imports)
  try:
    defaults = plugins.model_defaults(config)
    config = config.with_model_defaults(defaults, explicit)
    plugins.validate(config.validate())  # Every registry item and the model, before any data.
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")
  if config.model_defaults and not FLAGS.list:
    logging.info("--model=%s trains with its defaults where no flag is set: %s",
                 config.model, config.model_defaults)
    untuned = config.untuned_model_defaults(defaults, explicit)
    if untuned:
      logging.warning("--optimizer=%s with %s, which --model=%s tuned for --optimizer=%s: "
                      "set them for %s if they do not suit it", config.optimizer,
                      " ".join(untuned), config.model, defaults["optimizer"], config.optimizer)
  if FLAGS.list:
    known = plugins.registries()
    if FLAGS.list != "all" and FLAGS.list not in known:
      sys.exit(f"error: --list={FLAGS.list!r} is not one of: all, {', '.join(known)}")
    print(plugins.listing(None if FLAGS.list == "all" else FLAGS.list))
    return
  # Python's teardown would then destroy the distributed input iterator, which can wait
  # a minute for its prefetching threads (seen after 2 of 5 stops, --strategy=mirrored):
  # a single-host run ends at once instead, everything written and flushed by then.
  end = sys.exit if config.strategy == "multi_worker" else exit_now
  try:
    loop.train(config)
  except loop.Preempted as e:
    logging.warning("preempted: %s", e)
    end(loop.PREEMPTED_EXIT_CODE)
  except distribute.LostWorker as e:
    print(f"error: {e}", file=sys.stderr)
    # Not sys.exit: the runtime's shutdown would wait on the lost worker.
    exit_now(distribute.LOST_WORKER_EXIT_CODE)
  except KeyboardInterrupt:  # Ctrl-C outside the loop, which answers signals itself.
    print("error: interrupted; the newest checkpoint in the model dir is kept", file=sys.stderr)
    sys.exit(interrupts.INTERRUPTED_EXIT_CODE)
  except (config_lib.ConfigError, data.DataError, loop.NonFiniteError,
          checkpoints.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    end(1)
  end(0)


def exit_now(code):
  """Ends the process with `code` once the logs are flushed, without Python's teardown
  (every file of the run is closed or flushed before the loop returns)."""
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def parse_flags(argv):
  """absl's parsing, its errors (an unknown flag, a bad value, a missing flagfile) as
  one error line."""
  try:  # -h as well: absl knows --help, --helpshort and -? only.
    return FLAGS([arg if arg != "-h" else "--help" for arg in argv])
  except flags.Error as e:  # A missing flagfile's message starts "ERROR:: ".
    sys.exit(f"error: {str(e).removeprefix('ERROR:: ')} (--helpshort lists the flags)")
  except SystemExit as e:  # absl exits 1 after printing the help that was asked for.
    sys.exit(0 if e.code == 1 and help_asked(argv) else e.code)


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main, flags_parser=parse_flags)
