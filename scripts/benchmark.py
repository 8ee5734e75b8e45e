"""Measures training and input throughput on this machine; see docs/BENCHMARKS.md.

  python scripts/benchmark.py                 # every model, about 5-10 min on 2 cores
  python scripts/benchmark.py --quick         # tiny sizes, seconds (the test)
  python scripts/benchmark.py --models=resnet20,airbench --steps=10

Prints progress lines, a markdown table, and LAST one JSON line with fit_ratio,
fit_default_ratio, bf16_speedup, utilization_bf16, utilization_fp32,
pipeline_ratio and pipeline_vs_tutorial.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from scripts import cli  # noqa: E402

flags.DEFINE_list("models", [], "registry names to compare with model.fit (default: all)")
flags.DEFINE_integer("batch_size", None, "images per step, loop vs fit (default 256)")
flags.DEFINE_integer("steps", None, "steps per timed window = steps_per_loop "
                     "= steps_per_execution (default 3)")
flags.DEFINE_integer("repeats", None, "timed windows per measurement; medians are "
                     "reported (default 3)")
flags.DEFINE_string("precision", None, "policy of the loop-vs-fit comparison "
                    "(default auto: the one --precision=auto picks here)")
flags.DEFINE_integer("airbench_batch_size", None, "images per step of the airbench "
                     "precision and utilization runs (default 512)")
flags.DEFINE_integer("pipeline_examples", None, "synthetic images of the pipeline "
                     "benchmark (default 45000)")
flags.DEFINE_multi_string("pipeline_augment", [], "an --augment list whose input pipeline "
                          "is timed too, and compared with training; repeat the flag for "
                          "more (--pipeline_augment=crop,flip,randaugment)")
flags.DEFINE_integer("matmul_size", None, "side of the peak-FLOP/s matmul (default 4096)")
flags.DEFINE_bool("jit_compile", False, "compile both sides' steps with XLA")
flags.DEFINE_bool("quick", False, "tiny sizes: checks the script runs, measures nothing")
FLAGS = flags.FLAGS

_SIZES = ("batch_size", "steps", "repeats", "precision", "airbench_batch_size",
          "pipeline_examples", "matmul_size")


def main(argv):
  del argv
  from scripts import benchmark_lib as benchmark  # pylint: disable=g-import-not-at-top
  overrides = {name: FLAGS[name].value for name in _SIZES if FLAGS[name].value is not None}
  overrides.update(models=tuple(FLAGS.models), jit_compile=FLAGS.jit_compile,
                   pipeline_augment=tuple(FLAGS.pipeline_augment))
  if FLAGS.quick:
    overrides.setdefault("models", ())
    settings = benchmark.Settings.quick(**{k: v for k, v in overrides.items() if v})
  else:
    settings = benchmark.Settings(**overrides)
  rows, summary = benchmark.run(settings, log=lambda line: print(line, flush=True))
  print()
  print(benchmark.format_table(rows, summary))
  print(cli.json_line({k: (round(v, 4) if isinstance(v, float) else v)
                       for k, v in summary.items()}))


if __name__ == "__main__":
  cli.run(main)
