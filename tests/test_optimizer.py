"""PaperSGD against the paper's update rule written out by hand (the training tests compare it
with Keras' SGD and the L2 term on the tape, on two replicas)."""

import keras
import numpy as np
import pytest

from alexnet_keras.optimizer import PaperSGD


def weights_after(steps, momentum, decay=0.5, learning_rate=0.1):
    rng = np.random.default_rng(0)
    kernel = keras.Variable(rng.normal(size=(3, 2)).astype(np.float32), name="kernel")
    bias = keras.Variable(rng.normal(size=(2,)).astype(np.float32), name="bias")
    gradients = [
        rng.normal(size=(3, 2)).astype(np.float32),
        rng.normal(size=(2,)).astype(np.float32),
    ]
    optimizer = PaperSGD(learning_rate=learning_rate, momentum=momentum, kernel_decay=decay)
    optimizer.build([kernel, bias])
    expected = [kernel.numpy(), bias.numpy()]
    velocities = [np.zeros_like(value) for value in expected]
    for _ in range(steps):
        optimizer.apply(gradients, [kernel, bias])
        for index, (decay_here, gradient) in enumerate(zip((decay, 0.0), gradients)):
            velocities[index] = momentum * velocities[index] - learning_rate * (
                gradient + decay_here * expected[index]
            )
            expected[index] = expected[index] + velocities[index]
    return [kernel.numpy(), bias.numpy()], expected


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_the_update_is_the_papers_rule_with_the_decay_on_kernels_only(momentum):
    ours, expected = weights_after(steps=3, momentum=momentum)
    for one, two in zip(ours, expected):
        np.testing.assert_allclose(one, two, rtol=1e-6, atol=1e-7)
    # The decay moved the kernel: without it the values differ.
    no_decay, _ = weights_after(steps=3, momentum=momentum, decay=0.0)
    assert not np.allclose(ours[0], no_decay[0], rtol=1e-4)
    np.testing.assert_allclose(ours[1], no_decay[1], rtol=1e-6)


def test_nesterov_and_a_negative_decay_are_refused_up_front():
    with pytest.raises(ValueError, match="Nesterov"):
        PaperSGD(momentum=0.9, nesterov=True)
    with pytest.raises(ValueError, match="kernel_decay must be >= 0"):
        PaperSGD(kernel_decay=-1.0)
