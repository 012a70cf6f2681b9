"""Run transformers' own common model tests against LLaMo.

    python3 benchmarks/run_transformers_common_tests.py --tests PATH/TO/transformers/tests

`--tests` is the `tests/` folder of a transformers source checkout at the installed version (its test mixins are not
in the wheel; a release's source archive lacks `tests/generation/`). The tester, `transformers_tester_llamo.py`, is
copied into that folder as `models/llamo_common/test_llamo.py`, run with pytest from the checkout, and
removed again; a `models/llamo_common` folder that is already there is refused rather than replaced. Further
arguments go to pytest (for example `-k generate -x`)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

TESTER = Path(__file__).with_name("transformers_tester_llamo.py")
NEEDED = (
    "test_modeling_common.py",
    "test_configuration_common.py",
    "test_processing_common.py",
    "generation/test_utils.py",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=Path, required=True, help="the tests/ folder of a transformers checkout")
    args, pytest_args = parser.parse_known_args(argv)
    tests = args.tests.resolve()
    missing = [name for name in NEEDED if not (tests / name).is_file()]
    if missing:
        parser.error(f"{tests} is not a transformers tests/ folder with its test mixins: no {', '.join(missing)}.")
    folder = tests / "models" / "llamo_common"
    if folder.exists():
        parser.error(f"{folder} already exists; move it away first (it is not replaced).")
    folder.mkdir(parents=True)
    try:
        (folder / "__init__.py").write_text("", encoding="utf-8")
        shutil.copyfile(TESTER, folder / "test_llamo.py")
        command = [sys.executable, "-m", "pytest", str(folder), "-q", "-p", "no:cacheprovider", "-rfE", *pytest_args]
        return subprocess.run(command, cwd=tests.parent, check=False).returncode
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    sys.exit(main())
