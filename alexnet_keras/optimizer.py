"""The paper's update rule as a Keras optimizer, one fused pass over each weight.

Section 5 of the paper, for a learning rate eps, momentum 0.9 and weight decay 0.0005:

    v <- momentum * v - eps * (weight_decay * w + gradient)
    w <- w + v

Keras' SGD with momentum computes the same v and w as five separate element-wise passes
(two products, a difference, an assignment, an addition), and the decay added to the gradients
beforehand made two more: on the paper network's 60 M parameters each pass moves about 0.5 to
0.7 GB. Here XLA compiles the whole rule, decay included, into one loop that reads w, v and
the gradient once and writes w and v once (`bench/update_speed.py` measures it).
The values are Keras SGD's on the gradient plus `weight_decay * w` (a test checks them against
Keras SGD with the L2 term on the tape), and the slots are Keras SGD's, so checkpoints of
either load into the other.
"""

import keras
import tensorflow as tf

from alexnet_keras.layers import PACKAGE


def is_decayed(weight):
    """Weight decay applies to the kernels only, as in Caffe's reference model (decay_mult 0
    on the biases): decaying the biases would pull the paper's 1.0 initial biases back to 0."""
    return weight.path.endswith("kernel")


# Module-level, so that a shape is compiled once per process, not once per optimizer.
@tf.function(jit_compile=True)
def _momentum_update(weight, velocity, gradient, learning_rate, momentum, decay):
    new_velocity = momentum * velocity - learning_rate * (gradient + decay * weight)
    velocity.assign(new_velocity)
    weight.assign_add(new_velocity)


@tf.function(jit_compile=True)
def _plain_update(weight, gradient, learning_rate, decay):
    weight.assign_sub(learning_rate * (gradient + decay * weight))


def _component_beside(variable, weight):
    """The copy of `variable` on `weight`'s device: under a distribution strategy each
    replica's device updates its own copy of every weight and slot."""
    copies = tf.distribute.get_strategy().experimental_local_results(variable)
    if len(copies) == 1:
        return copies[0]
    for copy in copies:
        if copy.device == weight.device:
            return copy
    raise ValueError(f"no copy of {variable.name} on {weight.device}")


@keras.saving.register_keras_serializable(package=PACKAGE)
class PaperSGD(keras.optimizers.SGD):
    """SGD with momentum and the paper's weight decay on the kernels (`is_decayed`), the decay
    inside the momentum as in the paper (not Keras' decoupled `weight_decay`, which shrinks the
    weights outside the momentum). Applied after the gradients' all-reduce and, under a
    LossScaleOptimizer, after their unscaling: `kernel_decay` is the paper's 0.0005 as is."""

    def __init__(self, learning_rate=0.01, momentum=0.9, kernel_decay=0.0, **kwargs):
        if kwargs.get("nesterov"):
            raise ValueError("PaperSGD implements the paper's momentum, not Nesterov's")
        if kernel_decay < 0:
            raise ValueError(f"kernel_decay must be >= 0, got {kernel_decay}")
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        self.kernel_decay = kernel_decay
        self._decays = []

    def build(self, variables):
        super().build(variables)
        self._decays = [
            self.kernel_decay if is_decayed(variable) else 0.0 for variable in variables
        ]

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        learning_rate = tf.cast(learning_rate, dtype)
        gradient = tf.cast(gradient, dtype)
        decay = tf.constant(self._decays[index], dtype)
        if self.momentum == 0:
            _plain_update(variable, gradient, learning_rate, decay)
            return
        velocity = _component_beside(self.momentums[index].value, variable)
        _momentum_update(
            variable, velocity, gradient, learning_rate, tf.constant(self.momentum, dtype), decay
        )

    def get_config(self):
        return {**super().get_config(), "kernel_decay": self.kernel_decay}
