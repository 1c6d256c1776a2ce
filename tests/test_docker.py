"""The Dockerfile and the Kubernetes manifest, checked without a Docker engine: hadolint, the
requirements they install, the scripts they name, their users and the flags they pass."""

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
import yaml


def dockerfile_stages(repo_root):
    """{stage name: its lines} of the Dockerfile (continuation lines joined)."""
    text = (repo_root / "Dockerfile").read_text().replace("\\\n", " ")
    stages, current = {}, None
    for line in text.splitlines():
        match = re.match(r"FROM \S+(?: AS (\S+))?", line)
        if match:
            current = match.group(1) or "final"
            stages[current] = []
        elif current and line.strip() and not line.startswith("#"):
            stages[current].append(line)
    return stages


def pins(path):
    return dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", path.read_text(), re.M))


def test_hadolint_passes(repo_root):
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")
    result = subprocess.run(
        [hadolint, "Dockerfile"], cwd=repo_root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_images_install_the_makefiles_requirements(repo_root):
    makefile = (repo_root / "Makefile").read_text()
    installed_by_make = set(re.findall(r"-r (requirements\S*\.txt)", makefile))
    # The two environments the project runs in; the optional PyTorch benchmark peer is not
    # part of the image.
    assert installed_by_make - {"requirements-peer.txt"} == {
        "requirements.txt",
        "requirements-validate.txt",
    }
    stages = dockerfile_stages(repo_root)
    per_stage = {
        name: set(re.findall(r"-r (requirements\S*\.txt)", " ".join(lines)))
        for name, lines in stages.items()
    }
    assert per_stage["train"] == {"requirements.txt", "requirements-cuda.txt"}
    assert per_stage["validate"] == {"requirements-validate.txt"}
    for stage in ("train", "validate"):
        assert any("--no-deps" in line and "-r requirements" in line for line in stages[stage])
        assert any("uv pip check" in line for line in stages[stage])
    # The CUDA add-on agrees with requirements.txt on every package they share.
    main, cuda = pins(repo_root / "requirements.txt"), pins(repo_root / "requirements-cuda.txt")
    shared = set(main) & set(cuda)
    assert "tensorflow" in shared and {name: main[name] for name in shared} == {
        name: cuda[name] for name in shared
    }
    assert any(name.startswith("nvidia-cudnn") for name in cuda)
    assert f"UV_VERSION := {dockerfile_uv_version(repo_root)}\n" in makefile  # one uv for both


def dockerfile_uv_version(repo_root):
    return re.search(r"ARG UV_VERSION=(\S+)", (repo_root / "Dockerfile").read_text()).group(1)


def test_the_images_run_as_a_user_and_name_only_existing_scripts(repo_root):
    stages = dockerfile_stages(repo_root)
    for stage in ("train", "validate"):
        users = [line.split()[1] for line in stages[stage] if line.startswith("USER ")]
        assert users and users[-1].split(":")[0] not in ("root", "0"), stage
        assert any(line.startswith("WORKDIR ") for line in stages["base"])
    text = (repo_root / "Dockerfile").read_text()
    scripts = set(re.findall(r"\b([\w/]+\.(?:py|sh))\b", text))
    assert {"train.py", "evaluate.py", "docker/entrypoint.sh", "data/validate_data.py"} <= scripts
    for script in scripts:
        assert (repo_root / script).is_file(), script
    ignored = (repo_root / ".dockerignore").read_text().split()
    for folder in (".git", ".venv", ".venv-validate", "datasets", "runs", "exports"):
        assert folder in ignored, folder


@pytest.fixture
def python_on_path(tmp_path):
    """A PATH whose `python` is this interpreter, as in the image."""
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}


def test_the_entry_point_runs_project_scripts_and_commands(repo_root, python_on_path):
    script = repo_root / "docker" / "entrypoint.sh"
    result = subprocess.run(
        ["sh", str(script), "train.py", "--help"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
        env=python_on_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--data_dir" in result.stdout and "--model_dir" in result.stdout
    result = subprocess.run(
        ["sh", str(script), "echo", "as given"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
        env=python_on_path,
    )
    assert result.stdout.strip() == "as given"
    # No arguments: the demo's steps, the same ones `make demo` runs.
    dry_run = subprocess.run(
        ["make", "-n", "demo-run", "PY=python"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "python train.py" in dry_run.stdout and "python predict.py" in dry_run.stdout
    assert "demo-run PY=python" in script.read_text()


def test_the_tfjob_runs_the_image_with_train_py_flags(repo_root, python_on_path):
    manifest = yaml.safe_load((repo_root / "deploy" / "tfjob.yaml").read_text())
    assert manifest["kind"] == "TFJob"
    worker = manifest["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 2 and worker["restartPolicy"] == "ExitCode"
    pod = worker["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "tensorflow"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["image"].split(":")[0].endswith("alexnet-keras")
    assert (
        re.search(r"-t (\S+)", (repo_root / "Dockerfile").read_text()).group(1).split(":")[0]
        == "alexnet-keras"
    )
    arguments = container["args"]
    assert arguments[0] == "train.py" and (repo_root / arguments[0]).is_file()
    help_text = subprocess.run(
        [sys.executable, "train.py", "--help"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    for flag in (argument for argument in arguments if argument.startswith("--")):
        assert re.search(rf"\s{flag}\b", help_text), flag
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert {"/data", "/dev/shm"} <= mounts
    for path in (
        arguments[arguments.index("--data_dir") + 1],
        arguments[arguments.index("--model_dir") + 1],
    ):
        assert path.startswith("/data/")
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["shared-memory"]["emptyDir"]["medium"] == "Memory"


def test_the_validate_image_compiles_nothing_and_needs_no_frontend_image(repo_root):
    text = (repo_root / "Dockerfile").read_text()
    assert "# syntax=" not in text  # BuildKit would fetch a frontend image before building
    stages = dockerfile_stages(repo_root)
    compilers = re.compile(r"(?<![\w.-])(g\+\+|gcc|clang|build-essential)(?=[=\s]|$)")
    # A compiler only in the stage that builds wheels, which no image of ours is made from.
    assert [name for name, lines in stages.items() if compilers.search(" ".join(lines))] == [
        "validate-wheels"
    ]
    assert not any(line.startswith("FROM validate-wheels") for line in text.splitlines())
    native = re.search(r"ARG NATIVE_PACKAGES=(\S+)", text).group(1).split(",")
    validate_pins = pins(repo_root / "requirements-validate.txt")
    assert native and set(native) <= set(validate_pins)
    install = " ".join(stages["validate"])
    assert "COPY --from=validate-wheels /wheels" in install
    assert '--only-binary "${NATIVE_PACKAGES}"' in install and "--find-links" in install


@pytest.fixture
def demo_project(tmp_path, repo_root, synthetic_records):
    """A copy of the project whose demo dataset is the small one of the tests."""
    copy = tmp_path / "project"
    skipped = {
        ".git",
        ".venv",
        ".venv-validate",
        ".venv-peer",
        ".tools",
        "datasets",
        "runs",
        "exports",
        ".pytest_cache",
        "__pycache__",
    }
    shutil.copytree(
        repo_root,
        copy,
        symlinks=True,
        ignore=lambda folder, names: [name for name in names if name in skipped],
    )
    (copy / "datasets" / "synthetic").mkdir(parents=True)
    (copy / "datasets" / "synthetic" / "records").symlink_to(synthetic_records)
    return copy


@pytest.mark.slow
def test_the_demo_as_pid_1_stops_with_143_on_sigterm(demo_project, python_on_path):
    """docker stop sends SIGTERM to the container's PID 1 only: the entry point, as PID 1 of a
    PID namespace, passes it on to train.py and ends with its 143, running no later step."""
    unshare = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount", "--mount-proc"]
    if subprocess.run([*unshare, "true"], capture_output=True).returncode != 0:
        pytest.skip("no PID namespaces here (unshare)")
    process = subprocess.Popen(
        [*unshare, "sh", "docker/entrypoint.sh"],
        cwd=demo_project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**python_on_path, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("epoch 1/"):
                break
        children = pathlib.Path(f"/proc/{process.pid}/task/{process.pid}/children")
        (pid_1,) = children.read_text().split()  # the entry point, PID 1 inside
        os.kill(int(pid_1), signal.SIGTERM)
        lines += process.stdout.readlines()
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = "".join(lines)
    assert code == 143, output[-3000:]
    assert "python train.py" in output and "SIGTERM: saved a checkpoint" in output, output[-3000:]
    assert "python evaluate.py" not in output  # the demo stops at its first failed step
    assert list((demo_project / "runs" / "demo" / "checkpoints").glob("*.index"))


@pytest.fixture
def crossable_folder():
    """A new folder that any user can cross, as the folders above a container's mount points
    (pytest's tmp_path is inside folders only its owner can enter)."""
    folder = pathlib.Path(tempfile.mkdtemp())
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def test_a_data_folder_the_image_user_cannot_write_stops_with_what_to_do(
    crossable_folder, repo_root
):
    """A host folder Docker creates for -v is root's: the entry point says so and exits 2."""
    data = crossable_folder / "data"
    data.mkdir()
    script = str(repo_root / "docker" / "entrypoint.sh")
    if os.geteuid() == 0:  # as the image's user, uid 1000, on a root-owned folder
        command, uid, gid = (
            ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "sh", script],
            1000,
            1000,
        )
    else:
        command, uid, gid = ["sh", script], os.geteuid(), os.getegid()
        data.chmod(0o555)
    environment = {**os.environ, "DATA_MOUNT": str(data)}
    refused = subprocess.run(
        [*command, "echo", "ran"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        cwd=crossable_folder,
    )
    assert refused.returncode == 2 and "ran" not in refused.stdout, refused.stderr
    assert f"{data} is not writable by this container's user (uid {uid}," in refused.stderr
    assert f"sudo chown {uid}:{gid} HOST" in refused.stderr
    # The documented fix: the folder owned by the image's user.
    if os.geteuid() == 0:
        os.chown(data, 1000, 1000)
    else:
        data.chmod(0o755)
    prepared = subprocess.run(
        [*command, "echo", "ran"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        cwd=crossable_folder,
    )
    assert prepared.returncode == 0 and prepared.stdout.strip() == "ran", prepared.stderr
