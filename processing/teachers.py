"""Teachers that write instruction conversations: any OpenAI-compatible chat-completions endpoint, or a local
transformers chat model (the offline grounded teacher lives in `grounded_teacher.py`). A teacher turns chat messages
into a `TeacherReply`; `TeacherError` fails one molecule, `TeacherFatalError` (bad key, wrong URL) stops the job,
`BudgetExhausted` stops it cleanly when the request budget is spent. API keys are kept in a `Secret`, never shown."""

from __future__ import annotations

import contextlib
import email.utils
import itertools
import logging
import math
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx2
from huggingface_hub import ChatCompletionOutput, InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import hf_raise_for_status

from .grounded_teacher import GroundedTeacher
from .instruction_prompts import PROMPT_VERSION

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
FATAL_STATUS = frozenset({401, 403, 404})
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_WAIT_SECONDS = 86_400.0
"""The longest request timeout and retry delay accepted, a day (socket and thread waits overflow near 9.2e9 s)."""


class TeacherError(Exception):
    """One request failed for good (after retries, or not retryable); `reason` is a short stable key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class TeacherFatalError(TeacherError):
    """An error no other molecule will escape (authentication, wrong URL or model): the job stops."""


class GenerationStopped(Exception):
    """The job is stopping (budget spent, fatal error elsewhere, interrupt): this molecule is left for a later run."""


class BudgetExhausted(GenerationStopped):
    """The request budget is spent."""


@dataclass
class TeacherReply:
    """What a teacher wrote: `text`, why it stopped (`"stop"`, `"length"`, ...), token `usage` if reported."""

    text: str
    finish_reason: str | None
    usage: dict[str, int] = field(default_factory=dict)


class Secret:
    """A string that never appears in `repr`, `str` or f-strings; `reveal()` gives it to who must send it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        return text.replace(self._value, "***") if self._value else text

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return f"Secret({'***' if self._value else ''!r})"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a Secret cannot be pickled")


class RequestBudget:
    """A thread-safe cap on the number of HTTP requests (every attempt, retries included); None: unlimited."""

    def __init__(self, max_requests: int | None = None):
        if max_requests is not None and max_requests < 0:
            raise ValueError(f"max_requests must be >= 0, got {max_requests}")
        self.max_requests, self.used, self._lock = max_requests, 0, threading.Lock()

    def take(self) -> None:
        """Count one request; `BudgetExhausted` (and nothing counted) once the budget is spent."""
        with self._lock:
            if self.max_requests is not None and self.used >= self.max_requests:
                raise BudgetExhausted(f"request budget of {self.max_requests} spent")
            self.used += 1


@dataclass
class RetryPolicy:
    """Exponential backoff: attempt k (0-based) waits `min(max_backoff, initial_backoff * 2**k)`, scaled by a random
    factor in `[1 - jitter, 1 + jitter]`; a server's `Retry-After` (capped at `max_retry_after`) wins when longer."""

    max_retries: int = 5
    initial_backoff: float = 1.0
    max_backoff: float = 60.0
    jitter: float = 0.25
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        for name in ("initial_backoff", "max_backoff"):
            if not 0 <= (value := getattr(self, name)) <= MAX_WAIT_SECONDS:  # NaN too
                raise ValueError(f"{name} must be from 0 to {MAX_WAIT_SECONDS:g} seconds, got {value}")

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        backoff = min(self.max_backoff, self.initial_backoff * 2 ** min(attempt, 1000))  # 2**1024 is past a float
        backoff *= 1 + self.jitter * (2 * rng.random() - 1)
        if retry_after is not None:
            backoff = max(backoff, min(retry_after, self.max_retry_after))
        return max(0.0, backoff)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, email.utils.parsedate_to_datetime(value.strip()).timestamp() - time.time())
    return None


def chat_completions_url(base_url: str) -> str:
    """`<base_url>/chat/completions`, unless `base_url` already ends with it; refuses non-HTTP URLs."""
    if (parsed := urllib.parse.urlparse(base_url)).scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"Base URL must be an http(s) URL such as {DEFAULT_BASE_URL}, got {base_url!r}")
    base = base_url.rstrip("/")
    return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


def _check_temperature(temperature: float) -> None:
    """A `ValueError` unless `temperature` is a finite number >= 0 (a request with NaN is not even valid JSON)."""
    if not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")


class _TeacherClient(InferenceClient):
    """`InferenceClient` whose requests go through `http` (the teacher's own client) with `authorization()`'s headers:
    huggingface_hub's shared session follows redirects, refuses requests under `HF_HUB_OFFLINE` and may send the
    user's Hugging Face token, none of which suits a third-party server."""

    def __init__(self, base_url: str, http: httpx2.Client, authorization: Callable[[], dict[str, str]]):
        # any api_key, so that no Hugging Face token is looked up; the Authorization header is replaced below
        super().__init__(base_url=base_url, api_key="unused")
        self._http, self._authorization = http, authorization

    def _inner_post(self, request_parameters, *, stream: bool = False) -> bytes:
        headers = {k: v for k, v in request_parameters.headers.items() if k.lower() != "authorization"}
        response = self._http.post(
            request_parameters.url,
            json=request_parameters.json,
            content=request_parameters.data,
            headers={**headers, **self._authorization()},
        )
        if 300 <= response.status_code < 400:  # a redirect, not followed: `HTTPStatusError`
            response.raise_for_status()
        hf_raise_for_status(response)
        return response.content


class OpenAICompatibleTeacher:
    """A chat-completions endpoint (OpenAI, vLLM, Ollama, llama.cpp server, ...) at `base_url` (the API root, e.g.
    `http://localhost:11434/v1`). `api_key_env` names the environment variable holding the key (unset or empty: no
    Authorization header); `timeout` is per socket operation; `retry` applies to 429/5xx, timeouts and connection
    errors; `budget` caps requests, retries included."""

    name = "openai"
    prompt_version = PROMPT_VERSION
    max_concurrency: int | None = None

    def __init__(
        self,
        model: str,
        base_url: str = DEFAULT_BASE_URL,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        budget: RequestBudget | None = None,
        temperature: float = 0.7,
        max_tokens: int = 1024,
    ):
        if not model:
            raise ValueError("An OpenAI-compatible teacher needs a model name.")
        if not 0 < timeout <= MAX_WAIT_SECONDS:  # NaN too
            raise ValueError(f"timeout must be > 0 and at most {MAX_WAIT_SECONDS:g} seconds, got {timeout}")
        _check_temperature(temperature)
        self.model, self.base_url, self.url = model, base_url, chat_completions_url(base_url)
        self.api_key_env = api_key_env
        self._api_key = Secret(os.environ.get(api_key_env, "").strip() if api_key_env else "")
        if any(not 32 < ord(char) < 127 for char in self._api_key.reveal()):
            # an HTTP client would quote the whole header, key included, in its error
            raise ValueError(f"${api_key_env} holds spaces or characters that cannot be sent in an HTTP header.")
        if not self._api_key:
            logger.warning("No API key in $%s: requests are sent without an Authorization header.", api_key_env)
        self.timeout, self.retry, self.budget = timeout, retry or RetryPolicy(), budget or RequestBudget()
        self.temperature, self.max_tokens = temperature, max_tokens
        self.stop_event = threading.Event()
        host = urllib.parse.urlparse(self.url).hostname or ""
        # a proxy from the environment must not swallow requests to a local server
        http = httpx2.Client(timeout=timeout, follow_redirects=False, trust_env=host not in _LOOPBACK_HOSTS)
        self._client = _TeacherClient(self.url.removesuffix("/chat/completions"), http, self._headers)
        self._rng = random.Random()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model!r}, url={self.url!r}, api_key_env={self.api_key_env!r}, "
            f"timeout={self.timeout}, max_retries={self.retry.max_retries})"
        )

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key.reveal()}"} if self._api_key else {}

    def _error_text(self, text: str) -> str:
        return self._api_key.redact(text[:300]).strip()

    def _reply(self, output: ChatCompletionOutput) -> TeacherReply:
        try:
            choice = output.choices[0]
            text = choice.message.content
            if isinstance(text, list):  # content parts
                text = "".join(part.get("text", "") for part in text if isinstance(part, dict))
        except (IndexError, TypeError, AttributeError) as error:
            detail = f"not a chat completion ({error!r}): {self._error_text(str(output))}"
            raise TeacherError("invalid_response", detail) from None
        usage = {k: v for k, v in (output.usage or {}).items() if isinstance(v, int)}
        return TeacherReply(text=text if isinstance(text, str) else "", finish_reason=choice.finish_reason, usage=usage)

    def complete(self, messages: list[dict[str, str]], seed: int | None = None) -> TeacherReply:
        """One chat completion of `messages`, retried per `self.retry`; `seed` is sent for reproducible sampling."""
        for attempt in itertools.count():
            if self.stop_event.is_set():
                raise GenerationStopped("stopped")
            self.budget.take()
            try:
                output = self._client.chat_completion(
                    messages, model=self.model, temperature=self.temperature, max_tokens=self.max_tokens, seed=seed
                )
                return self._reply(output)
            except httpx2.HTTPStatusError as redirect:
                self.stop_event.set()
                location = self._api_key.redact(str(redirect.response.headers.get("Location")))
                detail = (
                    f"HTTP {redirect.response.status_code} from {self.url} redirects to {location}; redirects are not "
                    "followed, so that the API key is never sent elsewhere: give the final URL as the base URL"
                )
                raise TeacherFatalError("redirect", detail) from None
            except HfHubHTTPError as error:  # an error answer: raises at once where retrying cannot help
                status = error.response.status_code
                problem = f"HTTP {status} from {self.url}: {self._error_text(error.response.text)}"
                if status in FATAL_STATUS:
                    self.stop_event.set()  # every other request would be refused too
                    hint = f" (check the key in ${self.api_key_env})" if status in (401, 403) else ""
                    raise TeacherFatalError(f"http_{status}", problem + hint) from None
                if status not in RETRYABLE_STATUS and status < 500:
                    raise TeacherError(f"http_{status}", problem) from None
                retry_after = parse_retry_after(error.response.headers.get("Retry-After"))
            except httpx2.TransportError as error:  # timeouts, refused or dropped connections
                problem, retry_after = self._api_key.redact(f"{type(error).__name__}: {error}"), None
            except ValueError as error:  # a body that is not JSON
                raise TeacherError("invalid_response", f"not a chat completion ({error!r})") from None
            if attempt == self.retry.max_retries:
                raise TeacherError("retries_exhausted", f"{attempt + 1} attempts, last: {problem}")
            delay = self.retry.delay(attempt, retry_after, self._rng)
            logger.info("%s; retry %d/%d in %.2f s", problem, attempt + 1, self.retry.max_retries, delay)
            self.stop_event.wait(delay)  # set while waiting: the next attempt stops


class TransformersTeacher:
    """A local chat model (`AutoModelForCausalLM` + the tokenizer's chat template), from a folder or Hub id, one request
    at a time; `seed` seeds torch before each request. A template without a system role gets the system prompt in the
    first user turn."""

    name = "transformers"
    prompt_version = PROMPT_VERSION
    max_concurrency = 1

    def __init__(
        self,
        model: str,
        max_new_tokens: int = 1024,
        temperature: float = 0.7,
        device: str = "auto",
        dtype: str = "auto",
        budget: RequestBudget | None = None,
    ):
        _check_temperature(temperature)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model, self.tokenizer = str(model), AutoTokenizer.from_pretrained(str(model))
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{self.model} has no chat template: the transformers teacher needs a chat model.")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.language_model = AutoModelForCausalLM.from_pretrained(self.model, dtype=dtype).to(device).eval()
        self.device, self.max_new_tokens, self.temperature = device, max_new_tokens, temperature
        self.budget, self._lock = budget or RequestBudget(), threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, device={self.device!r})"

    def _encode(self, messages: list[dict[str, str]]):
        options = {"add_generation_prompt": True, "return_dict": True, "return_tensors": "pt"}
        try:
            return self.tokenizer.apply_chat_template(messages, **options)
        except Exception:  # jinja raises for a system role the template does not know
            if messages[0]["role"] != "system" or len(messages) < 2:
                raise
            first = {"role": messages[1]["role"], "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
            return self.tokenizer.apply_chat_template([first, *messages[2:]], **options)

    def complete(self, messages: list[dict[str, str]], seed: int | None = None) -> TeacherReply:
        """Generate the assistant's reply to `messages`; `finish_reason` is `"length"` when cut at max_new_tokens."""
        import torch

        self.budget.take()
        with self._lock:
            if seed is not None:
                torch.manual_seed(seed)
            sample = self.temperature > 0
            try:
                inputs = self._encode(messages).to(self.device)
                with torch.inference_mode():
                    output = self.language_model.generate(
                        **inputs,
                        max_new_tokens=self.max_new_tokens,
                        do_sample=sample,
                        temperature=self.temperature if sample else None,
                        top_p=0.95 if sample else None,
                        pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                    )
            except (RuntimeError, ValueError) as error:  # out of memory, prompt longer than the model's context, ...
                raise TeacherError("teacher_exception", f"{type(error).__name__}: {error}") from None
        prompt_length = inputs["input_ids"].shape[1]
        new_tokens = output[0, prompt_length:].tolist()
        eos = self.language_model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        stopped = any(token in eos_ids for token in new_tokens)
        finish = "length" if len(new_tokens) >= self.max_new_tokens and not stopped else "stop"
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        return TeacherReply(text, finish, {"prompt_tokens": prompt_length, "completion_tokens": len(new_tokens)})


TEACHERS = ("openai", "transformers", "grounded")


def build_teacher(
    kind: str,
    model: str | None = None,
    *,
    max_turns: int = 8,
    max_requests: int | None = None,
    temperature: float = 0.7,
    max_tokens: int = 1024,
    base_url: str = DEFAULT_BASE_URL,
    api_key_env: str = "OPENAI_API_KEY",
    timeout: float = 60.0,
    retries: int = 5,
    backoff: float = 1.0,
    max_backoff: float = 60.0,
    device: str = "auto",
    dtype: str = "auto",
):
    """The teacher `kind` (one of `TEACHERS`), as `llamo generate-data --teacher KIND` and a recipe's
    `conversations` step build it. `model` is required by `openai` (a model name) and `transformers` (a folder or Hub
    id); the grounded teacher writes at most `min(7, max_turns)` turns. A `ValueError` for what the user can fix."""
    if kind == "grounded":
        return GroundedTeacher(max_turns=min(7, max_turns), min_turns=min(4, max_turns))
    if kind not in TEACHERS:
        raise ValueError(f"Unknown teacher {kind!r}: choose one of {', '.join(TEACHERS)}.")
    if not model:
        raise ValueError(f"--teacher {kind} needs --model (a recipe: `model`).")
    budget = RequestBudget(max_requests)
    if kind == "transformers":
        return TransformersTeacher(
            model, max_new_tokens=max_tokens, temperature=temperature, device=device, dtype=dtype, budget=budget
        )
    return OpenAICompatibleTeacher(
        model,
        base_url=base_url,
        api_key_env=api_key_env,
        timeout=timeout,
        retry=RetryPolicy(max_retries=retries, initial_backoff=backoff, max_backoff=max_backoff),
        budget=budget,
        temperature=temperature,
        max_tokens=max_tokens,
    )
