"""Push an exported folder to the Hub with `huggingface_hub` (`create_repo`, `create_branch`, `upload_folder`).

The token comes from `HF_TOKEN` or the stored login (`get_token`); it is never printed, and it is removed from any
error text shown. A dry run lists what would be uploaded and contacts nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import llamo
from llamo.storage import format_bytes

from .export import HIDDEN_PATTERNS, ExportResult, list_files

EXPORT_MARKERS = ("config.json", "README.md")
_LOGIN = "(HF_TOKEN or `hf auth login`)"


class PushError(RuntimeError):
    """A push that cannot start or that the Hub refused; the message names the repository and what to check."""


@dataclass
class UploadPlan(ExportResult):
    """What a push sends: which files, to which repository, branch and visibility, with which commit message."""

    repo_id: str = ""
    commit_message: str = ""
    private: bool = False
    revision: str | None = None
    create_branch: bool = False

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}" + (f"/tree/{self.revision}" if self.revision else "")

    def describe(self) -> str:
        """A readable listing of the plan (paths and sizes)."""
        branch = (self.revision or "the default branch") + (", created if missing" if self.create_branch else "")
        return (
            f"{len(self.files)} files, {format_bytes(self.total_bytes)}, from {self.folder} to {self.repo_id} "
            f"({'private' if self.private else 'public'} if created; {branch})\n"
            f"commit message: {self.commit_message}\n{self.listing()}"
        )


def plan_push(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    create_branch: bool = False,
    commit_message: str | None = None,
) -> UploadPlan:
    """Check the folder (an export: `config.json` and `README.md`) and the repository id; list what would be sent."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"Folder not found: {folder}")
    if not folder.is_dir():
        raise PushError(f"{folder} is not a folder: push the folder written by `llamo export`.")
    if missing := [name for name in EXPORT_MARKERS if not (folder / name).is_file()]:
        raise PushError(
            f"{folder} is not an export (no {' or '.join(missing)}): run `llamo export MODEL_DIR {folder}` first."
        )
    if links := sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_symlink()):
        raise PushError(
            f"{folder} holds symbolic links ({', '.join(links[:5])}): push sends plain files only, never what a link "
            "points to. Export the model again, or replace the links by the files."
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PushError(f"Invalid repository id {repo_id!r}: {error}") from None
    if "/" not in repo_id:
        raise PushError(f"Give the repository as NAMESPACE/NAME (your user or organisation name), got {repo_id!r}.")
    for option, value in (("--revision", revision), ("--commit-message", commit_message)):
        if value is not None and not value.strip():
            raise PushError(f"{option} is empty: leave it out for the default.")
    if create_branch and not revision:
        raise PushError("--create-branch needs --revision BRANCH: the branch to create.")
    message = commit_message or f"Upload LLaMo model (llamo {llamo.__version__})"
    return UploadPlan(folder, list_files(folder), repo_id, message, private, revision, create_branch)


def push_folder(plan: UploadPlan, api=None, token: str | None = None):
    """Create the repository (and branch) if needed, then upload the folder in one commit with `api` (default: an
    `HfApi` with `token`, default `get_token()`); returns the `CommitInfo`. A `PushError` without a token, when the Hub
    refused or could not be reached, or for any failure (its text with the token replaced by `<token>`)."""
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise PushError(
            f"No Hugging Face token to push to {plan.repo_id}: set HF_TOKEN or log in with `hf auth login`."
        )
    try:
        api = api if api is not None else HfApi(token=token)
        api.create_repo(plan.repo_id, repo_type="model", private=plan.private, exist_ok=True)
        if plan.create_branch:
            api.create_branch(plan.repo_id, branch=plan.revision, repo_type="model", exist_ok=True)
        return api.upload_folder(
            repo_id=plan.repo_id,
            folder_path=str(plan.folder),
            repo_type="model",
            revision=plan.revision,
            commit_message=plan.commit_message,
            ignore_patterns=HIDDEN_PATTERNS,
        )
    except Exception as error:
        if (message := _push_failure(error, plan, token)) is None:
            raise
    # raised outside the `except` block, so that the original (whose text may hold the token) is not its __context__
    raise PushError(message)


def _push_failure(error: Exception, plan: UploadPlan, token: str) -> str | None:
    """The message of the `PushError` raised instead of `error`, or None to let `error` (a bug) through."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    text, kind, repo = str(error).strip().replace(token, "<token>"), type(error), plan.repo_id
    detail = text.splitlines()[0] if text else kind.__name__
    if isinstance(error, RevisionNotFoundError):
        return f"Branch {plan.revision!r} does not exist in {repo}: pass --create-branch to create it. ({detail})"
    if isinstance(error, RepositoryNotFoundError):
        return (
            f"Repository {repo} was not found or your token cannot see it: check the name and that the token "
            f"{_LOGIN} may write to that namespace. ({detail})"
        )
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            return (
                f"The Hub refused the push to {repo} (HTTP {status}): check that your token {_LOGIN} is valid and has "
                f"write access to that namespace. ({detail})"
            )
        return f"The Hub answered HTTP {status} while pushing to {repo}: {detail}"
    if isinstance(error, OSError) or kind.__module__.startswith(("httpx", "httpcore", "requests", "urllib3")):
        return (
            f"Could not reach the Hugging Face Hub while pushing to {repo} ({kind.__name__}: {detail}): check your "
            "network connection, proxy settings and HF_ENDPOINT, then run the command again."
        )
    return f"Pushing to {repo} failed ({kind.__name__}: {text})" if token in str(error) else None
