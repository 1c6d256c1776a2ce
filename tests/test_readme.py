"""The shell blocks of README.md and docs/*.md name only scripts and flags that exist: every
command that runs a project script (directly, through Docker, or as a console script) is
checked against that script's own --help."""

import functools
import json
import pathlib
import re
import shlex
import subprocess

import pytest

CONSOLE_SCRIPTS = {
    "alexnet-train": "train.py",
    "alexnet-evaluate": "evaluate.py",
    "alexnet-export": "export/export_model.py",
    "alexnet-build-tfrecords": "data/build_tfrecords.py",
    "alexnet-make-synthetic": "data/make_synthetic.py",
    "alexnet-import-weights": "import_weights.py",
    "alexnet-predict": "predict.py",
}
SUBCOMMAND_SCRIPTS = {"data/validate_data.py"}


def documentation_files(repo_root):
    """README.md and the pages of docs/."""
    return [repo_root / "README.md", *sorted((repo_root / "docs").glob("*.md"))]


def shell_commands(markdown_file):
    """Each shell command of the file's ```sh blocks, continuation lines joined, comments off."""
    text = markdown_file.read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def script_invocations(markdown_file):
    """(script, subcommand or None, [flags], command, arguments) for every command of the
    file that runs one."""
    found = []
    for command in shell_commands(markdown_file):
        try:
            words = shlex.split(command)
        except ValueError:
            continue  # the curl line's nested quotes
        for index, word in enumerate(words):
            script = CONSOLE_SCRIPTS.get(word, word)
            if not script.endswith(".py") or script.startswith(("-", "/")):
                continue
            rest = words[index + 1 :]
            subcommand = rest[0] if script in SUBCOMMAND_SCRIPTS and rest else None
            flags = [word.split("=", 1)[0] for word in rest if word.startswith("--")]
            found.append((script, subcommand, flags, command, rest))
            break
    return found


@functools.lru_cache(maxsize=None)
def help_text(repo_root, python, script, subcommand, beam=False):
    interpreter = (
        repo_root / ".venv-validate" / "bin" / "python" if script in SUBCOMMAND_SCRIPTS else python
    )
    # predict.py --runner also takes Beam's pipeline options, and lists them in its help.
    arguments = [
        str(interpreter),
        script,
        *(["--runner", "DirectRunner"] if beam else []),
        *([subcommand] if subcommand else []),
        "--help",
    ]
    result = subprocess.run(arguments, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (arguments, result.stderr[-2000:])
    return result.stdout


def test_documented_commands_name_existing_scripts_and_flags(repo_root, python):
    # The path a new user follows is all there, in README itself.
    assert {
        "data/build_tfrecords.py",
        "data/validate_data.py",
        "train.py",
        "evaluate.py",
        "export/export_model.py",
        "export/client.py",
    } <= {invocation[0] for invocation in script_invocations(repo_root / "README.md")}
    validate_data_arguments = []
    files_with_commands = set()
    for markdown_file in documentation_files(repo_root):
        name = markdown_file.relative_to(repo_root).as_posix()
        for script, subcommand, flags, command, arguments in script_invocations(markdown_file):
            files_with_commands.add(name)
            assert (repo_root / script).is_file(), f"{name} runs {script}, which does not exist"
            if script in SUBCOMMAND_SCRIPTS:
                validate_data_arguments.append(arguments)
                continue
            text = help_text(
                repo_root,
                python,
                script,
                subcommand,
                beam=script == "predict.py" and "--runner" in flags,
            )
            for flag in flags:
                assert re.search(rf"(^|[\s\[,]){re.escape(flag)}\b", text), (
                    f"{name}'s `{command}` passes {flag}, which `{script} --help` does not list"
                )
    assert {"README.md", "docs/data.md", "docs/validation.md", "docs/docker.md"} <= (
        files_with_commands
    )
    assert validate_data_arguments
    check_validate_data_arguments(repo_root, validate_data_arguments)


def check_validate_data_arguments(repo_root, argument_lists):
    """data/validate_data.py takes its own flags, and passes every other one to Apache Beam
    if Beam knows it: its own parser and Beam check each documented command's arguments, as a
    run would (one process, since importing Beam takes seconds)."""
    code = (
        "import json, sys; sys.path.insert(0, 'data'); import validate_data as script\n"
        "for arguments in json.loads(sys.argv[1]):\n"
        "    args, beam_flags = script.parse_args(arguments)\n"
        "    script.beam_pipeline_options(beam_flags)\n"
    )
    result = subprocess.run(
        [
            str(repo_root / ".venv-validate" / "bin" / "python"),
            "-c",
            code,
            json.dumps(argument_lists),
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_checker_catches_a_made_up_flag(repo_root, python):
    text = help_text(repo_root, python, "train.py", None)
    assert re.search(r"(^|[\s\[,])--data_dir\b", text)
    assert not re.search(r"(^|[\s\[,])--learning_rat\b", text)
    assert not re.search(r"(^|[\s\[,])--gpus\b", text)


@pytest.mark.parametrize("console_script", sorted(CONSOLE_SCRIPTS))
def test_console_scripts_take_the_flags_of_their_scripts(console_script, python, repo_root):
    executable = pathlib.Path(python).parent / console_script
    result = subprocess.run([str(executable), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: {console_script} ")
    script_help = help_text(repo_root, python, CONSOLE_SCRIPTS[console_script], None)
    assert set(re.findall(r"--\w+", result.stdout)) == set(re.findall(r"--\w+", script_help))
