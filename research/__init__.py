"""A TensorFlow research codebase for image classification.

The data flows one way: flags (train.py) -> Config (config.py) -> arrays and
tf.data pipelines of batch dicts (data.py, augment.py) -> model (models/) -> state
and compiled steps (state.py, steps.py) driven by the outer loop (loop.py) ->
checkpoints and TensorBoard (checkpoints.py, summaries.py). Registries are filled by
the modules research/plugins.py lists, research/ideas/ and --plugins.
"""

import os

# oneDNN's kernels for TensorFlow's CPU ops. TensorFlow turns them on by itself only on
# CPUs with AVX-512 VNNI/BF16, AVX-VNNI or AMX; on an AVX2-only CPU they made the fast
# recipe's float32 training step 1.54x faster (docs/BENCHMARKS.md), mostly through the
# convolutions' input gradients. Read once, when TensorFlow loads: importing `research`
# first (train.py, the scripts, the tests) sets it; TF_ENABLE_ONEDNN_OPTS=0 opts out.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
