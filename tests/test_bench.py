"""Every benchmark script runs: its `--smoke` setting (a tiny network, a few images and
rounds) end to end, each group of scripts in one `bench/smoke.py` process (TensorFlow starts
once per group). The groups are test classes, so that `--dist loadscope` runs them side by
side; each script is a test of its own, which shows that script's output when it fails.

Not marked slow although they start processes: `make test-fast` runs them too, as it is the
check run after a change to the library the scripts call. bench/validate_speed.py's smoke runs
in tests_validate/ (TFDV); the PyTorch peer's runs here only where `.venv-peer` exists.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "bench"
PEER_PYTHON = REPO_ROOT / ".venv-peer" / "bin" / "python"


def load_runner():
    """bench/smoke.py as a module (it imports no TensorFlow): its list of scripts."""
    spec = importlib.util.spec_from_file_location("bench_smoke", BENCH / "smoke.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))  # smoke.py imports bench/common.py
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


RUNNER = load_runner()
# Two groups of about equal CPU time (two cores; a third process would start TensorFlow once
# more): the scripts that wait on processes of their own and the heaviest, and every other
# script of bench/ (a new one too).
WITH_PROCESSES = ("allocator_speed", "import_weights_memory", "beam_speed", "finetune_transfer")
OTHERS = tuple(
    name
    for name in RUNNER.script_names()
    if name not in (*WITH_PROCESSES, *RUNNER.OTHER_ENVIRONMENTS)
)


def run_smoke(scripts):
    """Runs bench/smoke.py on `scripts`: ({script: seconds or None}, its whole output)."""
    completed = subprocess.run(
        [sys.executable, str(BENCH / "smoke.py"), *scripts],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        timeout=600,
    )
    output = completed.stdout + "\n--- stderr ---\n" + completed.stderr
    try:
        return json.loads(completed.stdout.strip().splitlines()[-1]), output
    except (IndexError, json.JSONDecodeError):
        pytest.fail(f"bench/smoke.py printed no results (status {completed.returncode}):\n{output}")


def script_output(output, script):
    """The lines of `output` between the script's start and end markers, and stderr's tail."""
    stdout, _, stderr = output.partition("\n--- stderr ---\n")
    start = stdout.find(f"=== {script} --smoke\n")
    end = stdout.find(f"=== {script} --smoke ", start + 1)
    return stdout[start:end] + "\n--- stderr of the group (tail) ---\n" + stderr[-3000:]


def pytest_generate_tests(metafunc):
    if "script" in metafunc.fixturenames:
        metafunc.parametrize("script", metafunc.cls.scripts)


class SmokeGroup:
    scripts = ()

    @pytest.fixture(scope="class")
    @classmethod
    def smoke_run(cls):
        return run_smoke(cls.scripts)

    def test_the_script_runs(self, smoke_run, script):
        results, output = smoke_run
        assert results.get(script) is not None, (
            f"bench/{script}.py --smoke failed:\n{script_output(output, script)}"
        )


class TestScriptsWithProcesses(SmokeGroup):
    scripts = WITH_PROCESSES


class TestTheOtherScripts(SmokeGroup):
    scripts = OTHERS


def test_the_peer_benchmark_without_its_environment_says_how_to_make_it(tmp_path):
    """What runs without PyTorch: peer_speed.py's --smoke up to the peer's Python."""
    sys.path.insert(0, str(BENCH))
    try:
        import peer_speed
    finally:
        sys.path.remove(str(BENCH))
    missing = tmp_path / "no-such-environment" / "bin" / "python"
    with pytest.raises(SystemExit) as exit:
        peer_speed.main(["--smoke", "--peer_python", str(missing)])
    assert str(exit.value) == f"no {missing}: create the peer environment with `make bench-peer`"


@pytest.mark.slow
@pytest.mark.skipif(
    not PEER_PYTHON.exists(),
    reason="no .venv-peer (PyTorch; `make env-peer` creates it): torch_peer.py's and "
    "peer_speed.py's --smoke not run",
)
def test_the_peer_benchmark_runs_against_pytorch():
    completed = subprocess.run(
        [sys.executable, str(BENCH / "peer_speed.py"), "--smoke"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert json.loads(completed.stdout.strip().splitlines()[-1])["torch"].startswith("torch ")
