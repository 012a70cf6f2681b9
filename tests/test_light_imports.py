"""`llamo --help` imports no torch / transformers; `import llamo` still registers the classes with the Auto API;
command modules import the standard library at the top and never `llamo.cli`."""

import ast
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llamo.cli import FEATURE_COMMANDS

from .conftest import subprocess_env

HEAVY = ("torch", "transformers", "torch_geometric")


def run_python(*argv: str, **environment: str) -> subprocess.CompletedProcess:
    """`python ARGV` in a fresh process (offline), which must succeed."""
    env = {**subprocess_env(), **environment}
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def last_json_line(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def imported_by(argv: list[str]) -> set[str]:
    """Top-level packages `python -X importtime ARGV` imported (importtime writes one line per module to stderr)."""
    result = run_python("-X", "importtime", *argv)
    names = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize(
    "command",
    [
        ["--help"],
        ["generate", "--help"],
        ["evaluate", "--help"],
        ["train", "stage1", "--help"],  # LLaMo's own training arguments; `--help-all` loads TRL for the rest
        ["train", "stage2", "--config", "tiny_random_stage2", "--help"],
    ],
)
def test_help_imports_no_torch(command):
    packages = imported_by(["-m", "llamo.cli", *command])
    assert "llamo" in packages and "argparse" in packages  # the parse really ran
    assert not packages & set(HEAVY), packages & set(HEAVY)


EVERY_HELP = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from llamo.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    helped = []
    for name, subparser in commands.items():
        if name == "train":  # `train --help` is argparse's; `train STAGE --help` is tested on its own
            argv = [name, "--help"]
        elif subparser._subparsers is not None:  # `index build --help`, ...
            argv = [name, next(iter(subparser._subparsers._group_actions[0].choices)), "--help"]
        else:
            argv = [name, "--help"]
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
            build_parser().parse_args(argv)
        helped.append((name, "usage: llamo" in out.getvalue()))
    heavy = sorted(name for name in sys.modules if name.split(".")[0] in {"torch", "transformers", "torch_geometric"})
    print(json.dumps({"helped": helped, "heavy": heavy}))
    """
)


def test_every_subcommand_help_imports_no_torch():
    report = last_json_line(run_python("-c", EVERY_HELP))
    assert len(report["helped"]) >= 10 and all(ok for _, ok in report["helped"]), report["helped"]
    assert report["heavy"] == []


IMPORT_THEN_AUTO = textwrap.dedent(
    """
    import json, sys

    import llamo

    light = not any(name in sys.modules for name in ("torch", "transformers", "torch_geometric"))
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, pipeline

    folder = sys.argv[1]
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    pipe = pipeline(llamo.MOLECULE_TASK, model=folder, device="cpu")
    print(json.dumps({
        "light": light,
        "classes": [type(item).__name__ for item in (config, model, processor, pipe)],
        "module": type(model).__module__,
    }))
    """
)


def test_import_llamo_is_light_and_still_registers_the_auto_classes(tiny_llamo_dir, tmp_path):
    modules = tmp_path / "modules"
    child = last_json_line(run_python("-c", IMPORT_THEN_AUTO, str(tiny_llamo_dir), HF_MODULES_CACHE=str(modules)))
    assert child["light"]
    classes = ["LlamoConfig", "LlamoForConditionalGeneration", "LlamoProcessor", "LlamoMoleculePipeline"]
    assert child["classes"] == classes
    assert child["module"] == "llamo.modeling_llamo"  # the installed package, not the folder's remote code
    assert not modules.exists()  # no remote code was loaded


def test_model_names_are_imported_on_first_use():
    import llamo

    assert llamo.LlamoForConditionalGeneration.__module__ == "llamo.modeling_llamo"
    assert "LlamoProcessor" in dir(llamo) and llamo.auto_registration.is_registered()
    assert llamo.smiles_llamo.parse_smiles is llamo.parse_smiles  # submodules, as `import llamo` gave them
    with pytest.raises(AttributeError, match="no_such_name"):
        llamo.no_such_name  # noqa: B018


def top_level_imports(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module or "")
    return names


def imported_anywhere(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


LIGHT_MODULES = ("llamo.errors", "llamo.cli_common", "llamo.chat_template_llamo", "llamo.retrieval")
"""llamo modules that import only the standard library: command modules may import them at the top."""


def imports_outside_the_standard_library(name: str) -> tuple[ast.Module, set[str]]:
    tree = ast.parse(Path(importlib.util.find_spec(name).origin).read_text(encoding="utf-8"))
    return tree, {module for module in top_level_imports(tree) if module.split(".")[0] not in sys.stdlib_module_names}


@pytest.mark.parametrize("name", FEATURE_COMMANDS)
def test_command_modules_import_the_standard_library_at_the_top_and_never_the_cli(name):
    tree, outside = imports_outside_the_standard_library(name)
    assert outside <= {"__future__", *LIGHT_MODULES}, outside
    assert not {"llamo.cli", "..cli"} & imported_anywhere(tree)


@pytest.mark.parametrize("name", LIGHT_MODULES)
def test_light_modules_import_only_the_standard_library(name):
    assert imports_outside_the_standard_library(name)[1] <= {"__future__"}


def test_command_error_lives_in_llamo_errors_and_the_cli_reexports_it():
    import llamo.cli
    import llamo.errors

    assert llamo.cli.CommandError is llamo.errors.CommandError
    assert llamo.cli.EXIT_USAGE == llamo.errors.EXIT_USAGE == 2
