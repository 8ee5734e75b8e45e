"""Gradient transforms: what happens to the gradient between the step and the optimizer.

A transform builder takes its settings and returns `transform(grads, variables) ->
grads`, lists in the same order. It sees the gradient of the update whole: summed over
replicas (and over the accumulated steps of --grad_accum_steps), float32, without
mixed_float16's loss scale and before the rules' lr_scale, so a norm is the same on
every replica under every precision and strategy. `--grad_transforms` applies to every
trained variable, in order; then a rule's `grad` item to the rule's variables only
(`--param_rules="kernels(rank=4, grad='agc(clipping=0.01)')"`). `context.current()` is
the step's StepContext, for a transform that follows a schedule.

    @GRAD_TRANSFORMS.register("clip_value")
    def clip_value(max=1.0):  # --grad_transforms="clip_value(max=0.5)"
      return lambda grads, variables: [tf.clip_by_value(g, -max, max) for g in grads]
"""

import dataclasses

import tensorflow as tf

from research.registry import Registry

GRAD_TRANSFORMS = Registry("gradient transform")


@dataclasses.dataclass(frozen=True)
class Transforms:
  """The run's transforms: `everywhere` on every trained variable, then each of
  `by_variable` ((transform, variable indices) of a rule) on its own variables."""
  everywhere: tuple = ()
  by_variable: tuple = ()

  @classmethod
  def build(cls, text, rules):
    """Of --grad_transforms `text` and the Rule of each trainable variable; None if
    there are none (the step then has no op of theirs)."""
    everywhere = tuple(GRAD_TRANSFORMS.build(spec) for spec in GRAD_TRANSFORMS.parse_list(text))
    by_variable = tuple(
        (GRAD_TRANSFORMS.build(rule.grad), [i for i, r in enumerate(rules) if r is rule])
        for rule in {id(r): r for r in rules}.values() if rule.grad)  # Each rule once.
    return cls(everywhere, by_variable) if everywhere or by_variable else None

  def __call__(self, grads, variables):
    """`grads` (None: not trained) of `variables`, transformed."""
    out = list(grads)
    present = [i for i, g in enumerate(grads) if g is not None]
    chain = [(t, present) for t in self.everywhere] + list(self.by_variable)
    for transform, indices in chain:
      mine = [i for i in indices if out[i] is not None]
      if mine:
        new = transform([out[i] for i in mine], [variables[i] for i in mine])
        for i, g in zip(mine, new):
          out[i] = g
    return out


@GRAD_TRANSFORMS.register("clip_norm")
def clip_norm(max=1.0):  # pylint: disable=redefined-builtin  (the flag's word)
  """Scales the gradients down to a global norm of at most `max`."""
  if not max > 0:
    raise ValueError(f"clip_norm: max must be > 0, got {max}")
  return lambda grads, variables: tf.clip_by_global_norm(grads, max)[0]
