"""Every command the README shows works as typed in the project's environment (the README tells
a new shell to `source .venv/bin/activate` once, right under the two commands): make targets
exist, executables are there, and the commands that can run here do, GitLab ones with --dry-run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nbgate.contract.model import CaseResult
from tests.support.builders import build_metrics, check, write_metrics_json

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent
# Words that start a shell command in this project's README (anything else in backticks is a
# name, a flag or a value).
COMMANDS = ("make", "pytest", "nbgate", "mlflow", "source", ".venv/bin/", "PATH=", "git",
            "gitlab-ci-local", ".ci/")
SYSTEM = {"source", "git", "PATH=", "pip"}  # the shell's, git and pip, not the project's


def readme_commands() -> list[str]:
    """Shell commands from ```sh blocks and from inline code that starts with a command word."""
    found = []
    for block in re.findall(r"```(?:sh|bash|console)\n(.*?)```", README, re.S):
        found += [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    for span in re.findall(r"`([^`\n]+)`", README):
        first = span.split(" ", 1)[0]
        if " " in span and (first in COMMANDS or first.startswith(COMMANDS[5:])):
            found.append(span.strip())
    return list(dict.fromkeys(found))


def program(command: str) -> str:
    words = shlex.split(command)
    while words and "=" in words[0] and not words[0].startswith("-"):
        words = words[1:]  # VAR=value prefixes
    return words[0] if words else ""


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {m.group(1) for m in re.finditer(r"^([A-Za-z][\w-]*):", text, re.M)}


def test_the_readme_opens_with_the_two_commands_and_how_to_enter_the_environment() -> None:
    head = README[:1200]
    assert head.index("make train") < head.index("make test") < head.index(
        "source .venv/bin/activate")


def test_the_readme_starts_with_use_it_in_your_repository_in_three_lines() -> None:
    """Right after the two commands: install, init, include."""
    two = "make test     # the project's whole test suite (what CI runs)\n```\n"
    after = README.split(two, 1)[1]
    assert after.startswith("\n## Use it in your repository\n")
    section = after.split("\n## Use it in your repository\n", 1)[1].split("\n(details", 1)[0]
    lines = [line for block in re.findall(r"```\w*\n(.*?)```", section, re.S)
             for line in block.splitlines() if line.strip()]
    assert len(lines) == 3, lines
    assert lines[0].startswith("pip install --index-url ")
    assert lines[0].endswith("/packages/pypi/simple nbgate")
    assert lines[1].startswith("nbgate init ") and "--ci" in lines[1]
    assert "component: $CI_SERVER_FQDN/" in lines[2] and "/pipeline@" in lines[2]


def test_every_component_input_is_in_the_readme_with_its_default() -> None:
    import yaml

    component = (ROOT / "templates" / "pipeline.yml").read_text().split("\n---\n")[0]
    inputs = yaml.safe_load(component)["spec"]["inputs"]
    rows = {m.group(1): m.group(2) for m in re.finditer(
        r"^\| `(\w+)` \| \w+ \| `([^`]*)` \|", README, re.M)}
    for name, spec in inputs.items():
        default = spec["default"]
        shown = (json.dumps(default) if isinstance(default, str) and not default
                 else "[" + ", ".join(default) + "]" if isinstance(default, list)
                 else str(default).lower() if isinstance(default, bool) else str(default))
        assert rows.get(name) == shown, (name, rows.get(name), shown)
    assert set(rows) >= set(inputs)
    assert "GitLab 17.0" in README


def test_every_command_names_something_that_exists() -> None:
    commands = readme_commands()
    assert len(commands) > 20, commands  # the extraction itself must keep working
    targets = make_targets()
    problems = []
    for command in commands:
        name = program(command)
        if name == "make":
            target = shlex.split(command)[1]
            if target not in targets:
                problems.append(f"{command!r}: no make target {target!r}")
        elif name.startswith(".venv/bin/"):
            if not (BIN / name.removeprefix(".venv/bin/")).exists():
                problems.append(f"{command!r}: {name} is not in the environment")
        elif name.startswith(".ci/") or name.startswith("bench"):
            if not (ROOT / name).exists():
                problems.append(f"{command!r}: {name} does not exist")
        elif name in ("pytest", "nbgate", "mlflow"):
            if not (BIN / name).exists():
                problems.append(f"{command!r}: {name} is not in .venv/bin")
        elif name == "gitlab-ci-local":
            if not (ROOT / ".tools/node_modules/.bin/gitlab-ci-local").exists():
                problems.append(f"{command!r}: `make tools` installs no gitlab-ci-local")
        elif name not in SYSTEM and not command.startswith("PATH="):
            problems.append(f"{command!r}: {name!r} is neither a make target nor a project tool")
    assert problems == []


def run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``command`` as a user types it after `source .venv/bin/activate`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "CI"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(BIN.parent)
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def after_training(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example project as `make train` leaves it: its files and a reports folder."""
    root = tmp_path_factory.mktemp("readme")
    for name in ("pyproject.toml", "requirements.txt", "config.yaml", "scoring_config.yaml",
                 "conftest.py"):
        (root / name).write_bytes((ROOT / name).read_bytes())
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        (root / "notebooks").mkdir(exist_ok=True)
        (root / "notebooks" / notebook.name).write_bytes(notebook.read_bytes())
    (root / ".venv").symlink_to(BIN.parent)  # where `make train` puts the environment
    (root / "models").mkdir()
    (root / "models" / "xgb_model.json").write_text("{}")
    case = CaseResult("notebooks/training_example.ipynb::train[cpu]",
                      "notebooks/training_example.ipynb", "train", "cpu", "passed", 4.1,
                      metrics={"roc_auc": 0.99, "log_loss": 0.1},
                      thresholds=[check("roc_auc", ">= 0.95", 0.99, True)],
                      outputs=["models/xgb_model.json"])
    write_metrics_json(root / "reports" / "metrics.json", build_metrics([case]))
    # What a CI job hands to the notify jobs (the README shows those commands too).
    write_metrics_json(root / "nbgate-jobs" / "train-cpu" / "metrics.json", build_metrics([case]))
    return root


def test_commands_that_run_here_run_as_typed(after_training: Path) -> None:
    """Local commands run; GitLab ones with --dry-run (no GitLab here); long runs (training,
    the suite) are covered by make targets and the suite itself."""
    runnable = [c for c in readme_commands()
                if program(c) in ("nbgate", ".venv/bin/nbgate")
                or ("--collect-only" in c and program(c) == "pytest")]
    assert runnable, readme_commands()
    failed = []
    for command in runnable:
        typed = command
        if " publish " in f" {command} " and "--dry-run" not in command:
            typed += " --dry-run"
        # These two need a live GitLab (doctor asks the instance named in CI_SERVER_URL).
        if program(command).endswith("nbgate") and command.split()[-1] in ("fetch-artifact",
                                                                             "doctor"):
            continue
        if command.startswith("nbgate init "):  # for another repository: test_init/test_adoption
            continue
        done = run(typed, after_training)
        if done.returncode != 0:
            failed.append(f"{typed!r} exited {done.returncode}: {done.stdout[-300:]}"
                          f"{done.stderr[-300:]}")
    assert failed == []
    for tool in ("pytest", "nbgate", "mlflow"):  # each starts, in a shell with the env active
        assert run(f"{tool} --help", after_training).returncode == 0, tool


def test_outside_ci_every_publish_command_says_one_line_or_shows_its_body(
    after_training: Path,
) -> None:
    for target in ("mr", "wiki", "artifacts"):
        plain = run(f"nbgate publish {target}", after_training)
        assert plain.returncode == 0 and len(plain.stdout.strip().splitlines()) == 1, plain
        assert "not in GitLab CI" in plain.stdout
        dry = run(f"nbgate publish {target} --dry-run", after_training)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "dry run" in dry.stdout
        for flags in ("", " --dry-run"):  # a missing reports folder: exit 2 with its path
            missing = run(f"nbgate publish {target} --reports MISSING{flags}", after_training)
            assert missing.returncode == 2 and "MISSING" in missing.stderr, (target, flags)
