"""A TensorFlow research codebase for image classification.

The data flows one way: flags (train.py) -> Config (config.py) -> arrays and
tf.data pipelines (data.py, augment.py) -> model (models/) -> compiled loop
(loop.py) -> checkpoints and TensorBoard (checkpoints.py, summaries.py).
"""
