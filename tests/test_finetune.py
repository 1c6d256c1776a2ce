"""Fine-tuning (`--init_from`, `--train_layers`): transfer, frozen layers bit for bit, the
source's architecture, run.json, resume, bad usage."""

import json
import re
import shutil
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_training import (
    fingerprint,
    kill_9_after_the_first_checkpoint,
    latest_checkpoint,
    run_cluster,
    run_train,
)

from alexnet_keras import build_alexnet, steps, training
from alexnet_keras.layers import LRN_CAFFE
from alexnet_keras_base import errors
from alexnet_keras_base.config import PRESETS

# ILSVRC-2012's per-channel mean, R, G, B: what an imported bvlc_alexnet subtracts.
ILSVRC_RGB_MEAN = (122.67891434, 116.66876762, 104.00698793)


def save_imported_like_model(path, num_classes=1000, width_multiplier=0.125):
    """A model shaped as import_weights.py writes one (1000 classes, Caffe's LRN, ILSVRC's
    mean, input scale 1, biases 0.1), narrowed to `width_multiplier`, with random weights."""
    keras.utils.set_random_seed(7)
    model = build_alexnet(
        num_classes=num_classes,
        lrn=LRN_CAFFE,
        rgb_mean=ILSVRC_RGB_MEAN,
        input_scale=1.0,
        bias_init=0.1,
        width_multiplier=width_multiplier,
    )
    model.save(path)
    return path


def optimizer_checkpoint_shapes(checkpoint):
    """Shapes of the variables a checkpoint's optimizer tracks, and of its momentum slots."""
    variables = tf.train.list_variables(checkpoint)
    tracked = [
        tuple(shape)
        for name, shape in variables
        if "optimizer/" in name and "/_trainable_variables/" in name
    ]
    slots = [
        tuple(shape)
        for name, shape in variables
        if re.search(r"optimizer/(inner_optimizer/)?_variables/\d+/", name) and shape
    ]
    return sorted(tracked), sorted(slots)


def weights_by_layer(model):
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


@pytest.fixture(scope="module")
def imported_like(tmp_path_factory):
    return save_imported_like_model(tmp_path_factory.mktemp("imported") / "imported.keras")


@pytest.fixture(scope="module")
def four_class_source(tmp_path_factory):
    """As `imported_like`, with 4 outputs and no run folder: nothing names its classes."""
    return save_imported_like_model(tmp_path_factory.mktemp("four") / "four.keras", num_classes=4)


# A fine-tuning recipe small enough for the suite, on the 72 training images of
# `synthetic_records` (9 steps of 8 per epoch).
SMALL = PRESETS["finetune"].replace(
    epochs=1, global_batch_size=8, checkpoint_every_steps=3, shuffle_buffer=64
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "precision,devices,source_classes",
    [
        ("off", ["/cpu:0", "/cpu:1"], 1000),  # MirroredStrategy; fc8 replaced
        ("float16", ["/cpu:0"], 4),  # loss scaling; fc8 kept
    ],
)
def test_train_layers_fc8_leaves_every_other_weight_as_loaded(
    precision,
    devices,
    source_classes,
    imported_like,
    four_class_source,
    synthetic_records,
    tmp_path,
):
    source_path = imported_like if source_classes == 1000 else four_class_source
    model_dir = tmp_path / "model"
    messages = []
    config = SMALL.replace(
        init_from=str(source_path), train_layers="fc8", mixed_precision=precision
    )
    training.train(config, synthetic_records, model_dir, devices=devices, log=messages.append)
    source = keras.models.load_model(source_path)
    result = keras.models.load_model(model_dir / "alexnet.keras")
    before, after = weights_by_layer(source), weights_by_layer(result)
    assert set(before) == set(after)
    for name in before:
        if name == "fc8":
            continue
        for old, new in zip(before[name], after[name], strict=True):
            np.testing.assert_array_equal(old, new, err_msg=name)
    # The source's architecture: Caffe's LRN, ILSVRC's mean (not the data's), input scale 1.
    assert result.get_layer("norm1").get_config()["alpha"] == LRN_CAFFE["alpha"]
    assert result.get_layer("norm2").get_config()["bias"] == LRN_CAFFE["bias"]
    assert result.get_layer("mean_subtraction").get_config()["scale"] == 1.0
    assert result.get_layer("conv1").get_config()["filters"] == 12
    np.testing.assert_allclose(after["mean_subtraction"][0], ILSVRC_RGB_MEAN, rtol=1e-6)
    # fc8: for the data's 4 classes, fresh or the source's, and trained.
    assert [weight.shape for weight in after["fc8"]] == [(512, 4), (4,)]
    if source_classes == 1000:
        assert (
            "fc8: a fresh layer for the data's 4 classes, in place of the source's 1000" in messages
        )
        start = (
            training.build_model(
                config.replace(width_multiplier=0.125, input_scale=1.0, dropout_rate=0.5),
                num_classes=4,
            )
            .get_layer("fc8")
            .get_weights()
        )
    else:
        assert "fc8: kept (the source's 4 classes)" in messages
        start = before["fc8"]
    assert np.abs(after["fc8"][0] - start[0]).max() > 0
    # The optimizer never saw a frozen weight: it tracks, and holds momentum for, fc8's
    # kernel and bias only.
    tracked, slots = optimizer_checkpoint_shapes(latest_checkpoint(model_dir))
    assert tracked == slots == [(4,), (512, 4)]
    run = json.loads((model_dir / "run.json").read_text())
    assert run["train_layers"] == "fc8" and run["fine_tuned"] is True
    assert run["init_from"]["path"] == str(source_path)
    assert run["init_from"]["weights_fingerprint"] == steps.weights_fingerprint(source)
    assert run["init_from"]["fc8"] == ("fresh" if source_classes == 1000 else "kept")
    assert run["init_from"]["architecture"]["lrn"] == LRN_CAFFE
    assert json.loads((model_dir / "config.json").read_text())["train_layers"] == "fc8"


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_from_the_checkpoint_not_the_source(
    imported_like, synthetic_records, tmp_path, python, repo_root
):
    source = tmp_path / "source.keras"
    shutil.copy(imported_like, source)
    model_dir = tmp_path / "model"
    arguments = [
        "--data_dir",
        synthetic_records,
        "--model_dir",
        model_dir,
        "--init_from",
        source,
        "--train_layers",
        "fc8,fc7",
        "--epochs",
        "2",
        "--global_batch_size",
        "8",
        "--checkpoint_every_steps",
        "3",
        "--shuffle_buffer",
        "64",
        "--no_progress",
    ]
    kill_9_after_the_first_checkpoint(python, repo_root, arguments, model_dir)
    # Once checkpoints exist they win: the source is not needed any more.
    source.rename(tmp_path / "moved.keras")
    result = run_train(python, repo_root, *arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not from --init_from" in result.stdout, result.stdout[-3000:]
    assert "finished at step 18" in result.stdout
    run = json.loads((model_dir / "run.json").read_text())
    assert run["train_layers"] == "fc7,fc8" and len(run["resumes"]) == 1
    assert run["init_from"]["path"] == str(source)
    original = weights_by_layer(keras.models.load_model(tmp_path / "moved.keras"))
    trained = weights_by_layer(keras.models.load_model(model_dir / "alexnet.keras"))
    for name in ("mean_subtraction", "conv1", "conv2", "conv3", "conv4", "conv5", "fc6"):
        for old, new in zip(original[name], trained[name], strict=True):
            np.testing.assert_array_equal(old, new, err_msg=name)
    assert np.abs(original["fc7"][0] - trained["fc7"][0]).max() > 0

    # Another choice of trained layers would change the optimizer's slots: refused.
    config = json.loads((model_dir / "config.json").read_text())
    config = PRESETS["finetune"].from_json(
        json.dumps({**config, "epochs": 3, "train_layers": "fc8"})
    )
    with pytest.raises(
        errors.UsageError,
        match="holds a checkpoint made with --train_layers fc7,fc8 but this run has fc8",
    ):
        training.train(config, synthetic_records, model_dir, log=lambda message: None)


@pytest.mark.slow
def test_two_local_workers_fine_tune_alike(
    imported_like, synthetic_records, tmp_path, python, repo_root
):
    """MultiWorkerMirroredStrategy on 127.0.0.1: both workers read the source, train fc8
    only, and end with the same weights; the chief's model holds the source's other layers."""
    model_dir, temporary_dir = tmp_path / "model", tmp_path / "worker_tmp"
    temporary_dir.mkdir()
    arguments = [
        "--data_dir",
        synthetic_records,
        "--model_dir",
        model_dir,
        "--init_from",
        imported_like,
        "--train_layers",
        "fc8",
        "--epochs",
        "1",
        "--global_batch_size",
        "8",
        "--shuffle_buffer",
        "64",
        "--no_progress",
    ]
    codes, outputs = run_cluster(python, repo_root, arguments, temporary_dir)
    assert codes == [0, 0], [output[-2000:] for output in outputs]
    assert "MultiWorkerMirroredStrategy with 2 replica(s)" in outputs[0]
    assert fingerprint(outputs[0]) == fingerprint(outputs[1])
    source = weights_by_layer(keras.models.load_model(imported_like))
    trained = weights_by_layer(keras.models.load_model(model_dir / "alexnet.keras"))
    for name in source:
        if name != "fc8":
            for old, new in zip(source[name], trained[name], strict=True):
                np.testing.assert_array_equal(old, new, err_msg=name)


@pytest.mark.parametrize(
    "arguments,message",
    [
        (
            ["--train_layers", "fc8,conv9"],
            "--train_layers: unknown layer 'conv9'; the layers are "
            "conv1, conv2, conv3, conv4, conv5, fc6, fc7, fc8, or all",
        ),
        (["--train_layers", ","], "--train_layers is empty"),
        (["--no_init_from", "--train_layers", "fc8"], "--train_layers fc8 needs --init_from"),
        (
            ["--train_layers", "fc6,fc7"],
            "fc8 will be a fresh layer for the data's 4 classes, in "
            "place of the source's 1000: --train_layers must include fc8",
        ),
        (["--init_from", "{tmp}/missing.keras"], "--init_from {tmp}/missing.keras does not exist"),
        (["--init_from", "{tmp}/not_a_model.keras"], "is not a .keras model file"),
    ],
)
def test_bad_fine_tuning_flags_exit_2_with_a_message(
    arguments, message, imported_like, synthetic_records, tmp_path, repo_root, capsys
):
    sys.path.insert(0, str(repo_root))
    import train as train_script

    (tmp_path / "not_a_model.keras").write_text("not a zip")
    arguments = [argument.format(tmp=tmp_path) for argument in arguments]
    if "--no_init_from" in arguments:
        arguments.remove("--no_init_from")
    elif "--init_from" not in arguments:
        arguments += ["--init_from", str(imported_like)]
    code = train_script.main(
        [
            "--data_dir",
            str(synthetic_records),
            "--model_dir",
            str(tmp_path / "model"),
            "--no_progress",
            *arguments,
        ]
    )
    assert code == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


# === Transfer ===
# Five synthetic classes for the source, five others for the fine-tuning
# (bench/finetune_transfer.py measures the same setting over several seeds).
SOURCE_CLASSES = ("circle", "triangle", "stripes", "ring", "dots")
TARGET_CLASSES = ("square", "star", "cross", "checkerboard", "crescent")


def make_records(folder, classes, train_per_class, val_per_class, seed):
    from alexnet_keras.synthetic import make_synthetic_dataset
    from alexnet_keras.tfrecords import ConvertOptions, convert

    total = train_per_class + val_per_class
    make_synthetic_dataset(folder / "images", images_per_class=total, seed=seed, classes=classes)
    convert(
        folder / "images",
        folder / "records",
        ConvertOptions(val_fraction=val_per_class / total, num_shards=2, workers=2),
        log=lambda message: None,
    )
    return folder / "records"


@pytest.fixture(scope="session")
def source_run(tmp_path_factory):
    """The `demo` recipe at width 0.125 on SOURCE_CLASSES (120 training images each, 20
    epochs), once per session: the run folder (alexnet.keras, and run.json naming its
    classes)."""
    root = tmp_path_factory.mktemp("source")
    records = make_records(root, SOURCE_CLASSES, 120, 30, seed=100)
    # The rate of the demo recipe when bench/finetune_transfer.py measured this setting.
    config = PRESETS["demo"].replace(
        width_multiplier=0.125,
        epochs=20,
        global_batch_size=16,
        learning_rate=0.02,
        deterministic=True,
    )
    training.train(config, records, root / "model", log=lambda message: None)
    return root / "model"


@pytest.mark.slow
@pytest.mark.large
def test_fine_tuning_transfers_what_the_source_learned(source_run, tmp_path):
    """Measured by bench/finetune_transfer.py with this setting (the source, deterministic,
    ends at 0.82 validation accuracy on its five classes, with the same weights in every
    process on one machine): on five other classes from 10 training images each, 50 steps of
    10, the `finetune` recipe from the source ends at 0.45, 0.46, 0.39, 0.61 and 0.43
    validation accuracy (100 images) for the seeds 0 to 4, the same recipe from random
    weights at 0.20, 0.20, 0.20, 0.16 and 0.20 (chance: 0.20); this test is seed 0. With the
    weight copy left out, the "fine-tuned" run stays at chance. The bars: 0.30 (a model at
    chance reaches it with probability 0.01) and 0.10 above the run from scratch."""
    records = make_records(tmp_path / "target", TARGET_CLASSES, 10, 20, seed=0)
    recipe = PRESETS["finetune"].replace(epochs=10, global_batch_size=10, deterministic=True)
    messages = []
    finetuned = training.train(
        recipe.replace(init_from=str(source_run / "alexnet.keras")),
        records,
        tmp_path / "finetuned",
        log=messages.append,
    )
    # The same recipe from random weights: the source's network and initialisation.
    demo = PRESETS["demo"]
    scratch = training.train(
        recipe.replace(
            width_multiplier=0.125,
            input_scale=demo.input_scale,
            kernel_init=demo.kernel_init,
            dropout_rate=demo.dropout_rate,
        ),
        records,
        tmp_path / "scratch",
        log=lambda message: None,
    )
    assert len(finetuned) == len(scratch) == 10  # the same number of steps
    assert any(
        message.startswith(
            "fc8: a fresh layer for the data's 5 classes, in place of "
            "the source's 5, which are other classes (circle, "
        )
        for message in messages
    ), messages
    finetuned_accuracy = 1 - finetuned[-1].val_top1_error
    scratch_accuracy = 1 - scratch[-1].val_top1_error
    assert finetuned_accuracy >= 0.30, (finetuned_accuracy, scratch_accuracy)
    assert finetuned_accuracy >= scratch_accuracy + 0.10, (finetuned_accuracy, scratch_accuracy)
