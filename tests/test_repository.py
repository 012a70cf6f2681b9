"""The repository keeps its promises to a new user: README commands, CI, remote-code isolation."""

import ast
import re
from pathlib import Path

from llamo.hub_cards.export import REMOTE_CODE_FILES

ROOT = Path(__file__).resolve().parents[1]
REMOTE_CODE = REMOTE_CODE_FILES


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [block.strip() for block in blocks if block.strip().startswith("pip install")]


def test_readme_gives_two_setup_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2, commands
    main_job, tests = commands
    assert "llamo generate" in main_job and "--smiles" in main_job
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    for step in tests.split(" && "):
        step = step.replace("pip install", "python3 -m pip install --quiet") if step.startswith("pip ") else step
        assert step in ci, f"{step!r} is not run by .ci/run"


def test_ci_lints_after_the_tests():
    lint = re.search(r"Lint: `([^`]+)`", (ROOT / "README.md").read_text())
    assert lint, "README's Development section names no lint command"
    lint_command = lint.group(1)
    assert "ruff check" in lint_command and "ruff format --check" in lint_command
    steps = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    steps = [line for line in steps if line and not line.startswith("#")]
    pytest_step = readme_commands()[1].split(" && ")[-1]
    assert steps[-2:] == [pytest_step, lint_command], steps[-2:]


def test_readme_test_command_shows_skip_reasons_and_names_the_debian_packages():
    pytest_step = readme_commands()[1].split(" && ")[-1]
    assert pytest_step.startswith("python3 -m pytest") and "-rs" in pytest_step.split()
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    install = re.search(r"apt-get install -y ([a-z0-9 -]+)`", readme)
    assert install, "README does not say how to install the Debian packages of the full test run"
    packages = set(install.group(1).split())
    assert packages == {"chromium", "default-jre-headless", "wordnet-base", "wordnet-sense-index"}
    for package in packages:  # and CI installs the same
        assert package in ci, package


def test_developers_guide_names_the_remote_code_files():
    guide = (ROOT / "DEVELOPERS.md").read_text()
    for name in (*REMOTE_CODE, "setup.py", "../shared"):
        assert name in guide, name


def test_remote_code_files_import_only_their_siblings():
    for name in REMOTE_CODE:
        tree = ast.parse((ROOT / "modeling_llamo" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert f"{node.module}.py" in REMOTE_CODE, (name, node.module)
            elif isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("llamo"), (name, node.module)


def test_no_generic_top_level_packages():
    setup = (ROOT / "setup.py").read_text()
    packages = re.findall(r'"(llamo[\w.]*|\w+)": "', setup)
    assert packages and all(package.startswith("llamo") for package in packages), packages
