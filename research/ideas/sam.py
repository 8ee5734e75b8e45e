"""Sharpness-aware minimization (Foret et al., 2021) as a step kind: two passes a step.

The first pass gives the gradient g of the global batch at w; the second pass takes the
gradient at w + rho g / |g| (the worst nearby point, to first order), and that is what
the optimizer applies at w. The loss and metrics are those of the first pass. The
perturbation is computed from the all-reduced gradient, so every replica moves the same
weights by the same amount, as one device would.

    --step="sam(rho=0.05)"

BatchNorm statistics move in both passes (as in the reference implementation).
"""

import tensorflow as tf

from research import optim
from research.steps import STEPS, Pass


def _move(strategy, variables, deltas, sign):
  """Adds sign * delta to each variable, in cross-replica context (like an update)."""
  for variable, delta in zip(variables, deltas):
    strategy.extended.update(
        variable.value, lambda v, d: v.assign_add(sign * tf.cast(d, v.dtype)),
        args=(delta,), group=False)


@STEPS.register("sam")
def sam(rho=0.05):
  """Sharpness-aware minimization: the gradient at w + rho g/|g|, applied at w."""
  if not rho > 0:
    raise ValueError(f"sam: rho must be > 0, got {rho}")

  def step(state, forward_backward, batch):
    first = forward_backward(batch)
    variables = state.model.trainable_variables
    grads = [tf.zeros_like(v, tf.float32) if g is None else g
             for g, v in zip(optim.unscaled(state.optimizer, first.grads), variables)]
    replica = tf.distribute.get_replica_context()
    grads = replica.all_reduce(tf.distribute.ReduceOp.SUM, grads)  # The global gradient.
    norm = tf.linalg.global_norm(grads)
    # A non-finite first pass moves nothing; its step is skipped by the finiteness check.
    factor = tf.where(tf.math.is_finite(norm) & (norm > 0), rho / norm, 0.0)
    epsilon = [g * factor for g in grads]
    replica.merge_call(_move, args=(variables, epsilon, 1.0))
    second = forward_backward(batch)
    with tf.control_dependencies([g for g in second.grads if g is not None]):
      replica.merge_call(_move, args=(variables, epsilon, -1.0))
    return Pass(first.outputs, first.per_example, first.loss, second.grads)

  return step
