"""What the scripts share: absl flag parsing as train.py does it, --weights, the JSON line.

Imports absl only, so a script can use it before TensorFlow loads.
"""

import json
import math
import sys

from absl import app, flags

WEIGHTS_HELP = ("model: the run's model.keras (EMA or Lookahead weights where on), saved "
                "when it finishes; checkpoint: its newest checkpoint's raw weights, for a "
                "run that was stopped or whose model.keras is damaged (final: as model)")


def define_weights_flag():
  """--weights, the same in every script that reads a run (research/evaluation.load_run)."""
  # Owned by the script run (absl names `__main__` by argv[0]): its --help lists it.
  flags.DEFINE_enum("weights", "model", ["model", "checkpoint", "final"], WEIGHTS_HELP,
                    module_name=sys.argv[0])


HELP_FLAGS = ("--help", "--helpshort", "--helpfull", "-h", "-?")


def parse_flags(argv):
  """absl's parsing, its errors (an unknown flag, a bad value) as one `error:` line, and
  help that exits 0."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # A missing flagfile's message starts "ERROR:: ".
    sys.exit(f"error: {str(e).removeprefix('ERROR:: ')} (--helpshort lists the flags)")
  except SystemExit:  # absl's help flags print the help, then exit 1.
    if any(arg in HELP_FLAGS for arg in argv[1:]):
      sys.exit(0)
    raise


def run(main):
  """app.run(main) with one-line flag errors."""
  app.run(main, flags_parser=parse_flags)


def json_line(value):
  """`value` as one line of valid JSON: each non-finite number becomes null, with a
  `warning:` line on stderr naming where it was."""
  def finite(item, where):
    if isinstance(item, float) and not math.isfinite(item):
      print(f"warning: {where or 'the value'} is {item}, written as null", file=sys.stderr)
      return None
    if isinstance(item, dict):
      return {k: finite(v, f"{where}.{k}" if where else str(k)) for k, v in item.items()}
    if isinstance(item, (list, tuple)):
      return [finite(v, f"{where}[{i}]") for i, v in enumerate(item)]
    return item
  return json.dumps(finite(value, ""), allow_nan=False)
