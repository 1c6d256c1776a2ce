"""The documentation against the tree: docs/architecture.md names every module and no module
that is gone, and every relative link of README.md and docs/*.md leads to a file that exists.
Reads files only (no TensorFlow)."""

import pathlib
import re

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
ARCHITECTURE = "docs/architecture.md"
# The folders whose every module the architecture page names, and the top-level scripts.
MODULE_GLOBS = (
    "alexnet_keras/*.py",
    "alexnet_keras_base/*.py",
    "alexnet_keras_cli/*.py",
    "data/*.py",
    "export/*.py",
    "bench/*.py",
    "*.py",
)
# A path to a source file, as the page writes one: `alexnet_keras/model.py`, `train.py`.
SOURCE_PATH = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.(?:py|cc|sh))\b")
# [text](target) links; images too.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def documentation_files(repo_root):
    return [repo_root / "README.md", *sorted((repo_root / "docs").glob("*.md"))]


def modules(repo_root):
    return sorted(
        {
            path.relative_to(repo_root).as_posix()
            for pattern in MODULE_GLOBS
            for path in repo_root.glob(pattern)
        }
    )


def named_source_paths(text):
    return set(SOURCE_PATH.findall(text))


def unnamed_modules(repo_root, text):
    """The modules of the tree that `text` does not name by their path."""
    return [module for module in modules(repo_root) if module not in named_source_paths(text)]


def missing_named_paths(repo_root, text):
    """The source paths `text` names that do not exist in the tree."""
    return sorted(path for path in named_source_paths(text) if not (repo_root / path).is_file())


def broken_links(repo_root, markdown_file):
    """The relative links of `markdown_file` whose file or folder does not exist (an anchor
    after `#` is not checked)."""
    broken = []
    for target in LINK.findall(markdown_file.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # https:, mailto:, or an anchor in the same page
        path = target.split("#", 1)[0]
        if not (markdown_file.parent / path).exists():
            broken.append(target)
    return broken


def test_the_architecture_page_names_every_module():
    text = (REPO_ROOT / ARCHITECTURE).read_text()
    assert len(modules(REPO_ROOT)) > 40
    assert unnamed_modules(REPO_ROOT, text) == [], f"add them to {ARCHITECTURE}"


def test_every_module_the_architecture_page_names_exists():
    text = (REPO_ROOT / ARCHITECTURE).read_text()
    assert {"train.py", "alexnet_keras/training.py", "bench/common.py"} <= named_source_paths(text)
    assert missing_named_paths(REPO_ROOT, text) == [], f"remove or rename them in {ARCHITECTURE}"


def test_the_architecture_checks_can_fail():
    text = (REPO_ROOT / ARCHITECTURE).read_text()
    without_model = text.replace("`alexnet_keras/model.py`", "the model module")
    assert unnamed_modules(REPO_ROOT, without_model) == ["alexnet_keras/model.py"]
    # A path inside a longer one names only the longer one.
    assert named_source_paths("see `tests/test_model.py`") == {"tests/test_model.py"}
    assert missing_named_paths(REPO_ROOT, text + " `alexnet_keras/gone.py`") == [
        "alexnet_keras/gone.py"
    ]


def test_readme_starts_with_the_two_commands():
    """On a fresh machine README's first commands are these two, and nothing before them."""
    readme = (REPO_ROOT / "README.md").read_text()
    first_block = re.search(r"```(\w*)\n(.*?)```", readme, re.S)
    assert first_block.group(1) == "sh"
    commands = [line.split("#", 1)[0].strip() for line in first_block.group(2).splitlines()]
    assert commands == ["make demo", "make test"]


def test_relative_links_lead_to_existing_files(tmp_path):
    files = documentation_files(REPO_ROOT)
    assert REPO_ROOT / ARCHITECTURE in files
    for markdown_file in files:
        assert broken_links(REPO_ROOT, markdown_file) == [], markdown_file.name
    page = tmp_path / "page.md"
    page.write_text("[ok](page.md#top) [web](https://example.com) [same](#top) [gone](gone.md)")
    assert broken_links(tmp_path, page) == ["gone.md"]
