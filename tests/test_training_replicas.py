"""Training on two replicas of one machine learns, and learns what one replica learns: the
loss falls, one and two replicas end with the same weights, two networks train one after the
other in one process, and the demo recipe learns two synthetic shapes. In a module of its own
so that these long runs go to a test process apart from test_training.py's."""

import json

import keras
import numpy as np
import pytest
from test_training import TINY

from alexnet_keras import training
from alexnet_keras_base.config import PRESETS


@pytest.mark.slow
def test_two_replicas_train_and_lower_the_loss(synthetic_records, tmp_path):
    messages = []
    config = TINY.replace(epochs=3)
    results = training.train(
        config,
        synthetic_records,
        tmp_path / "model",
        devices=["/cpu:0", "/cpu:1"],
        log=messages.append,
    )
    assert "MirroredStrategy with 2 replica(s), 4 images per replica per step" in messages[0]
    assert len(results) == 3
    assert results[-1].train_loss < results[0].train_loss
    for name in (
        "alexnet.keras",
        "alexnet_best.keras",
        "history.csv",
        "training_curves.png",
        "config.json",
    ):
        assert (tmp_path / "model" / name).exists(), name
    assert list((tmp_path / "model" / "logs").iterdir())
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["epochs"] == 3 and saved["width_multiplier"] == 0.125
    history = (tmp_path / "model" / "history.csv").read_text().splitlines()
    assert len(history) == 4 and history[0].startswith("epoch,train_loss")


@pytest.mark.slow
def test_one_and_two_replicas_end_with_the_same_weights(synthetic_records, tmp_path):
    # 3 steps of 24 images: few enough that float summation order stays negligible.
    config = TINY.replace(epochs=1, dropout_rate=0.0, deterministic=True, global_batch_size=24)
    weights = []
    for devices in (["/cpu:0"], ["/cpu:0", "/cpu:1"]):
        model_dir = tmp_path / f"replicas_{len(devices)}"
        training.train(config, synthetic_records, model_dir, devices=devices, log=lambda m: None)
        model = keras.models.load_model(model_dir / "alexnet.keras")
        weights.append(model.get_weights())
    # The starting weights, built exactly as train() builds them (same seed, same dropout:
    # a dropout layer with a rate draws a seed and shifts every later initializer).
    initial = training.build_model(config, num_classes=4).get_weights()
    for index, (one, two, start) in enumerate(zip(*weights, initial)):
        if index == 0:  # the RGB mean, set from dataset.json
            np.testing.assert_array_equal(one, two)
            continue
        update_one, update_two = one - start, two - start
        # `start` is where the runs started: 3 steps move a kernel far less than a redraw of
        # its initializer would (a redraw differs by about 1.4x the kernel's norm).
        if start.ndim > 1:
            assert np.linalg.norm(update_one) < 0.5 * np.linalg.norm(start), index
        # Both runs moved the weights, by the same update up to float summation order.
        # A loss scaled per replica instead of per global batch would differ by 2x.
        assert np.linalg.norm(update_one) > 0
        relative = np.linalg.norm(update_one - update_two) / np.linalg.norm(update_one)
        assert relative < 1e-2, (index, relative)


@pytest.mark.slow
@pytest.mark.large
def test_demo_config_learns_the_synthetic_shapes(tmp_path):
    """The demo recipe, 20 epochs on two synthetic classes that differ clearly (a filled
    circle, a striped square; 150 training and 50 validation images each).

    Measured while writing this test: 0.94, 0.97 and 1.00 validation accuracy at the end
    with the data seeds 3, 5 and 7, but 0.78 in one run of seed 3 (training is not
    bit-reproducible; that run's loss spiked at epoch 6 and it was still recovering), and at
    most 0.52 and 0.56 over the last ten epochs for recipes broken on purpose (a learning
    rate of 1e-6; labels shuffled across the two classes). The bar: the best of the last ten
    epochs reaches 0.70 of 100 validation images; a chance-level model does so with
    probability 4e-4 (10 x P(Binomial(100, 0.5) >= 70)). Those figures are for the demo's
    former rate, 0.02; with today's 0.01, 0.94 and 0.98 at the end with the seeds 3 and 5."""
    from alexnet_keras.synthetic import make_synthetic_dataset
    from alexnet_keras.tfrecords import ConvertOptions, convert

    make_synthetic_dataset(
        tmp_path / "images", images_per_class=200, seed=3, classes=["circle", "stripes"]
    )
    convert(
        tmp_path / "images",
        tmp_path / "records",
        ConvertOptions(val_fraction=0.25, workers=2),
        log=lambda message: None,
    )
    info = json.loads((tmp_path / "records" / "dataset.json").read_text())
    assert info["class_counts"]["validation"] == {"circle": 50, "stripes": 50}
    results = training.train(
        PRESETS["demo"].replace(epochs=20),
        tmp_path / "records",
        tmp_path / "model",
        log=lambda message: None,
    )
    accuracies = [1 - result.val_top1_error for result in results]
    assert max(accuracies[-10:]) >= 0.70, accuracies
    assert results[-1].train_loss < 0.5 * results[0].train_loss


@pytest.mark.slow
def test_two_runs_of_different_networks_in_one_process_on_two_replicas(synthetic_records, tmp_path):
    """A fine-tuning after a training in one process (a notebook): each strategy numbers its
    collectives apart, or the second run's all-reduce meets the first one's shapes."""
    for width in (0.125, 0.25):
        results = training.train(
            TINY.replace(width_multiplier=width, epochs=1),
            synthetic_records,
            tmp_path / f"width_{width}",
            devices=["/cpu:0", "/cpu:1"],
            log=lambda message: None,
        )
        assert len(results) == 1
