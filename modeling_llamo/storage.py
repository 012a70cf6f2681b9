"""A full disk, said plainly: recognise it, name the folder and the space needed, keep what was written.

Writers word a full disk differently (`OSError(errno.ENOSPC)`, torch's "basic_ios::clear" or "unexpected pos N vs M",
safetensors' "os error 28"): `disk_full_guard` turns any of them into a `DiskFullError` naming the folder, which the
command line prints alone, exiting with `EXIT_DISK_FULL`."""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import EXIT_DISK_FULL

DISK_FULL_WORDINGS = ("No space left", "basic_ios::clear", "unexpected pos", "file write failed", "Disk quota exceeded")
"""How writers word a failed write when the disk is full (errno ENOSPC / EDQUOT), see the module docstring."""


class DiskFullError(OSError):
    """A write failed for lack of space. `folder`: where; `needed`: bytes the write needs (an estimate, or None)."""

    def __init__(self, folder: str | Path, writing: str, needed: int | None = None, kept: str | None = None):
        self.folder = Path(folder)
        self.needed = needed
        existing = next((folder for folder in (self.folder, *self.folder.parents) if folder.exists()), self.folder)
        space = []  # the free space on the disk holding the folder (or its nearest existing parent), when known
        with suppress(OSError):
            space.append(f"{format_bytes(shutil.disk_usage(existing).free)} free there")
        space += [f"{writing} needs about {format_bytes(needed)}"] if needed else []
        details = f" ({'; '.join(space)})" if space else ""
        message = f"no space left on the disk of {self.folder} while writing {writing}{details}. {kept or ''}"
        super().__init__(
            errno.ENOSPC, f"{message.rstrip()} Free space there (or write elsewhere) and rerun the same command."
        )

    def __str__(self) -> str:
        return str(self.strerror)


def refuse_output_over(output: str | Path, **inputs: str | Path | None) -> None:
    """Raise a `ValueError` when `output` is, or is a folder holding, one of the existing `inputs` (named by their
    keywords, `_` read as a space): replacing the output would delete that input."""
    target = Path(output).resolve()
    for name, given in inputs.items():
        if given is None or not Path(given).exists():
            continue
        path = Path(given).resolve()
        if path.is_relative_to(target):
            relation = "is" if path == target else "holds"
            raise ValueError(
                f"The output {output} {relation} the {name.replace('_', ' ')} {given}: writing it would delete that; "
                "choose another output."
            )


def _errors_in_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from or during, is a write that found the disk full: by errno
    (ENOSPC, EDQUOT) or by one of `DISK_FULL_WORDINGS`."""
    return any(
        (isinstance(found, OSError) and found.errno in (errno.ENOSPC, errno.EDQUOT))
        or any(wording in str(found) for wording in DISK_FULL_WORDINGS)
        for found in _errors_in_chain(error)
    )


def folder_bytes(path: str | Path) -> int:
    """Bytes of the files under `path`."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with suppress(OSError):  # a file removed meanwhile, or unreadable
                total += os.path.getsize(os.path.join(root, name))
    return total


def format_bytes(count: int) -> str:
    """`1536` -> "1.5 KB": decimal units, as `df -H` and file managers show them."""
    value = float(count)
    for unit in ("bytes", "KB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _folder_of(error: BaseException, default: Path) -> Path:
    """The folder of the file that failed, when the error names it; else `default`."""
    names = (getattr(found, "filename", None) for found in _errors_in_chain(error))
    return next((Path(name).parent for name in names if isinstance(name, (str, os.PathLike))), default)


@contextmanager
def disk_full_guard(
    folder: str | Path,
    writing: str,
    needed: int | Callable[[], int | None] | None = None,
    kept: str | Callable[[], str] | None = None,
) -> Iterator[None]:
    """Turn a full disk inside the block into a `DiskFullError` naming `folder` (or the failing file's folder), saying
    it was `writing`, how much it `needed` and what was `kept` (callables are evaluated only on failure)."""
    try:
        yield
    except Exception as error:
        if isinstance(error, DiskFullError) or not is_disk_full(error):  # a DiskFullError already names its folder
            raise
        raise DiskFullError(
            _folder_of(error, Path(folder)),
            writing,
            needed() if callable(needed) else needed,
            kept() if callable(kept) else kept,
        ) from error


@contextmanager
def exit_on_disk_full(program: str) -> Iterator[None]:
    """For a script's `__main__`: a full disk inside the block prints `program: error: ...` and exits with
    `EXIT_DISK_FULL`, without a traceback."""
    try:
        yield
    except Exception as error:
        if not is_disk_full(error):
            raise
        print(f"{program}: error: {disk_full_message(error)}", file=sys.stderr)
        raise SystemExit(EXIT_DISK_FULL) from None


def disk_full_message(error: BaseException) -> str:
    """A one-paragraph message for a full-disk error that no writer guarded (no folder known for certain)."""
    if isinstance(error, DiskFullError):
        return str(error)
    return str(DiskFullError(_folder_of(error, Path.cwd()), "its output"))
