"""Push an exported folder to the Hugging Face Hub with `huggingface_hub` (`create_repo`, `upload_folder`).

The token comes from `HF_TOKEN` or the user's stored login (`hf auth login`); it is never printed, and it is removed
from any error text shown to the user. A dry run lists what would be uploaded and contacts nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .export import list_files

HIDDEN_PATTERNS = [".*", "*/.*"]
"""What `upload_folder` is told to skip: hidden files and folders, which `list_files` leaves out too."""

EXPORT_MARKERS = ("config.json", "README.md")


class PushError(RuntimeError):
    """A push that cannot start or that the Hub refused; the message names the repository and what to check."""


@dataclass
class UploadPlan:
    """What a push sends: which files, to which repository, branch and visibility, with which commit message."""

    folder: Path
    repo_id: str
    files: list[tuple[str, int]]
    commit_message: str
    private: bool = False
    revision: str | None = None
    create_branch: bool = False

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}" + (f"/tree/{self.revision}" if self.revision else "")

    def describe(self) -> str:
        """A readable listing of the plan (paths and sizes)."""
        visibility = "private" if self.private else "public"
        branch = self.revision or "the default branch"
        lines = [
            f"{len(self.files)} files, {format_size(self.total_bytes)}, from {self.folder} to {self.repo_id} "
            f"({visibility} if created; {branch}{', created if missing' if self.create_branch else ''})",
            f"commit message: {self.commit_message}",
        ]
        lines.extend(f"  {format_size(size):>10}  {path}" for path, size in self.files)
        return "\n".join(lines)


def format_size(size: int) -> str:
    """`1536` -> `"1.5 KB"` (binary units)."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1024
        if value < 1024 or unit == "TB":
            break
    return f"{value:.1f} {unit}"


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

    import llamo

    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"Folder not found: {folder}")
    if not folder.is_dir():
        raise PushError(f"{folder} is not a folder: push the folder written by `llamo export`.")
    missing = [name for name in EXPORT_MARKERS if not (folder / name).is_file()]
    if missing:
        raise PushError(
            f"{folder} is not an export (no {' or '.join(missing)}): run `llamo export MODEL_DIR {folder}` first."
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PushError(f"Invalid repository id {repo_id!r}: {error}") from None
    if "/" not in repo_id:
        raise PushError(f"Give the repository as NAMESPACE/NAME (your user or organisation name), got {repo_id!r}.")
    if create_branch and not revision:
        raise PushError("--create-branch needs --revision BRANCH: the branch to create.")
    return UploadPlan(
        folder=folder,
        repo_id=repo_id,
        files=list_files(folder),
        commit_message=commit_message or f"Upload LLaMo model (llamo {llamo.__version__})",
        private=private,
        revision=revision,
        create_branch=create_branch,
    )


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "<token>") if token else text


def _hub_error(error: Exception, plan: UploadPlan, token: str | None) -> PushError:
    """A `PushError` saying what went wrong with the Hub and what to check, without the token."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    detail = _scrub(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__, token)
    if isinstance(error, RevisionNotFoundError):
        return PushError(
            f"Branch {plan.revision!r} does not exist in {plan.repo_id}: pass --create-branch to create it. ({detail})"
        )
    if isinstance(error, RepositoryNotFoundError):
        return PushError(
            f"Repository {plan.repo_id} was not found or your token cannot see it: check the name and that the token "
            f"(HF_TOKEN or `hf auth login`) may write to that namespace. ({detail})"
        )
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            return PushError(
                f"The Hub refused the push to {plan.repo_id} (HTTP {status}): check that your token (HF_TOKEN or "
                f"`hf auth login`) is valid and has write access to that namespace. ({detail})"
            )
        return PushError(f"The Hub answered HTTP {status} while pushing to {plan.repo_id}: {detail}")
    return PushError(
        f"Could not reach the Hugging Face Hub while pushing to {plan.repo_id} ({type(error).__name__}: {detail}): "
        "check your network connection, proxy settings and HF_ENDPOINT, then run the command again."
    )


def _is_network_error(error: Exception) -> bool:
    module = type(error).__module__.split(".")[0]
    return isinstance(error, OSError) or module.startswith(("httpx", "httpcore", "requests", "urllib3"))


def push_folder(plan: UploadPlan, api=None, token: str | None = None):
    """
    Create the repository if needed (and the branch, with `create_branch`), then upload the folder in one commit.

    Args:
        plan: from `plan_push`.
        api: an `huggingface_hub.HfApi` (or an object with its `create_repo`, `create_branch`, `upload_folder`);
            default: one built with the token.
        token: default: `HF_TOKEN`, else the stored login.

    Returns:
        the `CommitInfo` of the upload.

    Raises:
        PushError: no token, the Hub refused or could not be reached, or any failure whose text holds the token
            (re-raised with the token replaced by `<token>`, without the original exception attached). The
            repository is named, the token never.
    """
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
        failure = _push_failure(error, plan, token)
        if failure is None:
            raise
    # raised outside the `except` block: the original exception (its text, an HTTP request's headers) holding the
    # token is not even kept as `__context__`
    raise failure


def _push_failure(error: Exception, plan: UploadPlan, token: str) -> PushError | None:
    """The `PushError` to raise instead of `error`, or None to let `error` (a bug, not a push problem) through."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError) or _is_network_error(error):
        return _hub_error(error, plan, token)
    if token in str(error):
        return PushError(f"Pushing to {plan.repo_id} failed ({type(error).__name__}: {_scrub(str(error), token)})")
    return None


__all__ = ["HIDDEN_PATTERNS", "PushError", "UploadPlan", "format_size", "plan_push", "push_folder"]
