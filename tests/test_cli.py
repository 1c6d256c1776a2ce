"""The commands: --help without TensorFlow, quiet start-up, the config and layouts without
TensorFlow, and the package as a wheel with its console scripts, outside the checkout."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import sysconfig

import keras
import pytest

import alexnet_keras_base.quiet
from alexnet_keras import build_alexnet

SCRIPTS = [
    "train.py",
    "evaluate.py",
    "data/build_tfrecords.py",
    "data/make_synthetic.py",
    "export/export_model.py",
    "predict.py",
    "export/predict.py",
    "export/client.py",
    "import_weights.py",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_answers_without_importing_tensorflow(script, python, repo_root):
    result = subprocess.run(
        [python, "-X", "importtime", script, "--help"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: ")
    imported = [
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    ]
    assert "argparse" in imported  # the measurement works
    assert not [name for name in imported if name.split(".")[0] in ("tensorflow", "keras")]


def test_the_foundation_imports_without_tensorflow_or_the_commands(python, repo_root):
    """The foundation's modules must stay importable before TensorFlow (the commands' flags)
    and in the validation environment (data/validate_data.py), and stand below the commands."""
    modules = sorted(path.stem for path in (repo_root / "alexnet_keras_base").glob("*.py"))
    assert {"config", "layout", "errors", "files", "validation_report", "quiet"} <= set(modules)
    code = (
        "import sys; "
        + "".join(f"import alexnet_keras_base.{module}; " for module in modules)
        + "print(sorted({name.split('.')[0] for name in sys.modules} & "
        "{'tensorflow', 'keras', 'numpy', 'alexnet_keras', 'alexnet_keras_cli'}))"
    )
    result = subprocess.run(
        [python, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_run_shows_its_error_without_tensorflows_start_up_chatter(python, repo_root, tmp_path):
    result = subprocess.run(
        [python, "train.py", "--data_dir", tmp_path / "missing", "--model_dir", tmp_path / "model"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
        env={key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"},
    )
    assert result.returncode == 2
    assert f"error: --data_dir {tmp_path / 'missing'} does not exist" in result.stderr
    for chatter in (
        "cudart_stub",
        "cpu_feature_guard",
        "absl::InitializeLog",
        "cuInit",
        "To enable the following instructions",
    ):
        assert chatter not in result.stderr, result.stderr


def test_the_start_up_filter_keeps_real_errors(capsys):
    captured = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1.0 1 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n"
        "E0000 00:00:1.0 1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
        "E0000 00:00:1.0 1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
        "E0000 00:00:1.0 1 some_kernel.cc:10] Out of memory while allocating 4 GiB\n"
    )
    alexnet_keras_base.quiet._replay(captured, no_gpu=True)
    assert capsys.readouterr().err == (
        "no GPU found: running on the CPU\n"
        "E0000 00:00:1.0 1 some_kernel.cc:10] Out of memory while allocating 4 GiB\n"
    )
    # With a GPU present, a failed cuInit is news and stays.
    alexnet_keras_base.quiet._replay(captured, no_gpu=False)
    assert capsys.readouterr().err.count("failed call to cuInit") == 2


ALLOCATOR_PROBE = """
import json, os
import alexnet_keras_base.quiet
tf = alexnet_keras_base.quiet.import_tensorflow_quietly(find_devices=False)
doubled = tf.ones((1000, 1000)) * 2
try:
    statistics = tf.config.experimental.get_memory_info("CPU:0")
except ValueError:  # TensorFlow's default CPU allocator keeps no statistics
    statistics = None
print(json.dumps({"setting": os.environ.get("TF_CPU_ALLOCATOR_USE_BFC"),
                  "statistics": statistics}))
"""


def test_the_commands_run_tensorflow_with_its_bfc_allocator_on_the_cpu(python, repo_root):
    def probe(user_setting):
        environment = {
            key: value for key, value in os.environ.items() if key != "TF_CPU_ALLOCATOR_USE_BFC"
        }
        if user_setting is not None:
            environment["TF_CPU_ALLOCATOR_USE_BFC"] = user_setting
        result = subprocess.run(
            [python, "-c", ALLOCATOR_PROBE],
            cwd=repo_root,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    ours, users = probe(None), probe("false")  # the user's own choice wins
    assert ours["setting"] == "true" and users["setting"] == "false"
    # The BFC allocator counts what it holds: at least the two 4 MB tensors. Without it
    # TensorFlow uses its default allocator (no statistics) or, on some CPUs, oneDNN's,
    # which counts in other units: either way not what BFC counted.
    assert ours["statistics"]["peak"] >= 8_000_000, ours
    assert users["statistics"] != ours["statistics"], (ours, users)


@pytest.fixture(scope="module")
def wheel(repo_root, tmp_path_factory):
    """The package built as a wheel, as `pip install .` or a package index would get it."""
    output = tmp_path_factory.mktemp("dist")
    uv = repo_root / ".tools" / "bin" / "uv"
    result = subprocess.run(
        [
            str(uv),
            "build",
            "--wheel",
            "--no-build-isolation",
            "--python",
            sys.executable,
            "--out-dir",
            str(output),
            str(repo_root),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = output.glob("alexnet_keras-*.whl")
    return path


@pytest.mark.slow
def test_the_wheel_installs_the_library_and_console_scripts_outside_the_checkout(
    wheel, repo_root, tmp_path
):
    # A fresh environment that reuses this environment's pinned packages (no network), but
    # not its editable install of the checkout: a .pth line adds a folder to the path
    # without running the .pth files inside it.
    environment = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(environment)], check=True)
    site_packages = pathlib.Path(
        subprocess.run(
            [
                str(environment / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site_packages / "pinned.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    uv = repo_root / ".tools" / "bin" / "uv"
    result = subprocess.run(
        [
            str(uv),
            "pip",
            "install",
            "--offline",
            "--no-deps",
            "--python",
            str(environment / "bin" / "python"),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    app = tmp_path / "app"
    app.mkdir()
    keras.utils.set_random_seed(3)
    build_alexnet(num_classes=6, width_multiplier=0.125).save(app / "alexnet.keras")
    snippet = (
        "import alexnet_keras, keras\n"
        "model = keras.models.load_model('alexnet.keras')  # safe mode\n"
        "print(alexnet_keras.__file__, model.output.shape[-1])\n"
    )
    loaded = subprocess.run(
        [str(environment / "bin" / "python"), "-c", snippet],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    module_file, classes = loaded.stdout.split()[-2:]
    assert module_file.startswith(str(environment)) and classes == "6"

    for command in (
        "alexnet-train",
        "alexnet-evaluate",
        "alexnet-export",
        "alexnet-build-tfrecords",
        "alexnet-make-synthetic",
        "alexnet-predict",
    ):
        helped = subprocess.run(
            [str(environment / "bin" / command), "--help"],
            cwd=app,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert helped.returncode == 0, (command, helped.stderr[-2000:])
        assert helped.stdout.startswith("usage: ")


def test_every_config_field_is_a_train_flag_and_a_runs_config_json_reproduces_it(tmp_path):
    from alexnet_keras_base.config import PRESETS, Config
    from alexnet_keras_base.errors import UsageError
    from alexnet_keras_cli import train as train_command

    config = PRESETS["demo"].replace(
        momentum=0.8, pca_noise_std=0.0, plateau_factor=0.5, xla=True, seed=7
    )
    (tmp_path / "config.json").write_text(config.to_json())
    folders = ["--data_dir", str(tmp_path), "--model_dir", str(tmp_path / "run")]
    args = train_command.parse_args(
        [
            "--config",
            str(tmp_path / "config.json"),
            *folders,
            "--epochs",
            "3",
            "--no-xla",
            "--kernel_init",
            "paper",
        ]
    )
    assert all(hasattr(args, field.name) for field in dataclasses.fields(Config))
    resolved, _, _ = train_command.resolve(args)
    assert resolved == config.replace(epochs=3, xla=False, kernel_init="paper")
    # A preset by name, and the defaults: 'paper' with --data_dir.
    args = train_command.parse_args([*folders, "--momentum", "0.5"])
    assert train_command.resolve(args)[0] == PRESETS["paper"].replace(momentum=0.5)
    for bad in ("nonsense", str(tmp_path / "run")):
        with pytest.raises(UsageError, match="neither a preset"):
            train_command.resolve(train_command.parse_args(["--config", bad, *folders]))
    (tmp_path / "other.json").write_text('{"epochs": 3, "colour": "red"}')
    with pytest.raises(UsageError, match="not a config.json of this project"):
        train_command.resolve(
            train_command.parse_args(["--config", str(tmp_path / "other.json"), *folders])
        )
