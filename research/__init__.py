"""A TensorFlow research codebase for image classification.

The data flows one way: flags (train.py) -> Config (config.py) -> arrays and
tf.data pipelines of batch dicts (data.py, augment.py) -> model (models/) -> state
and compiled steps (state.py, steps.py) driven by the outer loop (loop.py) ->
checkpoints and TensorBoard (checkpoints.py, summaries.py). Registries are filled by
the modules research/plugins.py lists, research/ideas/ and --plugins.
"""
