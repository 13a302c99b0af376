"""The repository keeps its promises to a new user."""

import re

from conftest import REPO

TEST_COMMAND = "bash scripts/setup.sh test && .venv/bin/python -m pytest"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(bash scripts/setup\.sh.*)$", quick_start, flags=re.M)
    assert len(commands) == 2 and commands[1] == TEST_COMMAND
    assert TEST_COMMAND in (REPO / ".ci" / "run").read_text()


def test_generated_outputs_are_ignored():
    ignored = (REPO / ".gitignore").read_text().split()
    for path in ("/outputs/*", ".venv/", "/data/", "*.ckpt"):
        assert path in ignored


def test_the_outputs_folder_is_in_the_tree_with_its_readme():
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "outputs"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert tracked == ["outputs/README.md"] or not (REPO / ".git").exists()


def test_code_is_lint_clean():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(REPO)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
