"""Instruction-data generation against a real, scripted chat-completions server on 127.0.0.1."""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import datasets
import pytest
from rdkit import Chem
from rdkit.Chem import Descriptors, Lipinski, rdMolDescriptors

from llamo.cli import build_parser, main
from llamo.processing.grounded_teacher import GroundedTeacher, molecule_facts, split_sentences
from llamo.processing.instruction_data import DataGenerationConfig, generate_conversations
from llamo.processing.instruction_inputs import ColumnNames, Molecule, read_molecules
from llamo.processing.instruction_prompts import (
    PROMPT_VERSION,
    SEED_INSTRUCTION,
    ConversationFormatError,
    conversation_problem,
    parse_conversation,
)
from llamo.processing.instruction_store import load_generated_conversations, read_jsonl
from llamo.processing.schema import CONVERSATION_FEATURES, record_metadata
from llamo.processing.teachers import (
    OpenAICompatibleTeacher,
    RequestBudget,
    RetryPolicy,
    Secret,
    TeacherFatalError,
    build_teacher,
    chat_completions_url,
    parse_retry_after,
)

from .conftest import CHEBI_VALIDATION, subprocess_env

KEY_ENV = "LLAMO_TEST_TEACHER_KEY"
KEY = "sk-test-4f1c2d9e8b7a6655-SECRET"

MOLECULES = [  # (smiles, invented description)
    ("CCO", "A short primary alcohol."),
    ("CCN", "A primary amine with two carbons."),
    ("CCC", "A three-carbon alkane."),
    ("CCCl", "A chloroalkane."),
    ("c1ccccc1", "The simplest aromatic hydrocarbon."),
    ("CC(=O)O", "A short carboxylic acid."),
    ("CC(=O)Oc1ccccc1C(=O)O", "An acetylated salicylic acid."),
    ("OCC1OC(O)C(O)C(O)C1O", "A hexose in its pyranose form."),
    ("CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "A methylated xanthine."),
    ("CCOCC", "A symmetric ether."),
    ("CC=O", "A two-carbon aldehyde."),
    ("NCC(=O)O", "The simplest amino acid."),
    ("CCS", "A short thiol."),
    ("CC(C)O", "A secondary alcohol."),
    ("OC(=O)CC(=O)O", "A dicarboxylic acid."),
]


# ---------------------------------------------------------------------------------------------------------------------
# The scripted server
# ---------------------------------------------------------------------------------------------------------------------


def good_conversation(smiles: str, pairs: int = 2) -> list[dict[str, str]]:
    tag = hashlib.sha1(smiles.encode()).hexdigest()[:10]
    messages = []
    for index in range(pairs):
        messages.append({"role": "user", "content": f"Question {index} about molecule {tag}?"})
        messages.append({"role": "assistant", "content": f"Answer {index}: molecule {tag} is well described."})
    return messages


def scripted_reply(behaviour: str, smiles: str) -> tuple[str, str]:
    """(content, finish_reason) of a 200 reply."""
    conversation = good_conversation(smiles)
    as_json = json.dumps({"messages": conversation})
    if behaviour == "ok":
        return as_json, "stop"
    if behaviour == "fenced":
        return f"Here is the conversation:\n```json\n{as_json}\n```\nI hope it helps.", "stop"
    if behaviour == "lines":
        return "\n".join(f"{m['role'].title()}: {m['content']}" for m in conversation), "stop"
    if behaviour == "length":
        return as_json[: len(as_json) // 2], "length"
    if behaviour == "unanswered":
        return json.dumps({"messages": conversation[:3]}), "stop"
    if behaviour == "broken":
        return json.dumps({"messages": conversation[1:]}), "stop"
    if behaviour == "duplicate":
        return json.dumps({"messages": conversation[:2] * 2}), "stop"
    if behaviour == "too_many":
        return json.dumps({"messages": good_conversation(smiles, pairs=5)}), "stop"
    if behaviour == "empty_turn":
        return json.dumps({"messages": [*conversation[:1], {"role": "assistant", "content": " "}]}), "stop"
    if behaviour == "garbage":
        return "I am sorry, I cannot write that.", "stop"
    raise AssertionError(behaviour)


class ScriptedServer(ThreadingHTTPServer):
    """Chat completions with per-molecule scripts: attempt k for a molecule follows `scripts[smiles][k]` (the last
    entry repeats); seed (step 1) requests are always answered well."""

    daemon_threads = True

    def __init__(self, scripts: dict[str, list[str]] | None = None):
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.scripts = scripts or {}
        self.attempts: Counter = Counter()
        self.log: list[dict] = []
        self.delay = 0.0
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address) -> None:  # a client that timed out: not a test failure
        pass

    def generation_requests(self) -> list[dict]:
        return [entry for entry in self.log if not entry["seed"]]


class ScriptedHandler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self._leave()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _enter(self) -> None:
        with self.server.lock:
            self.server.in_flight += 1
            self.server.max_in_flight = max(self.server.max_in_flight, self.server.in_flight)
        self.counted = True

    def _leave(self) -> None:
        # before the answer goes out: once the client has it, its next request may arrive before this thread ends
        if getattr(self, "counted", False):
            with self.server.lock:
                self.server.in_flight -= 1
            self.counted = False

    def do_POST(self) -> None:
        self._enter()
        try:
            self._answer(self.server)
        finally:
            self._leave()

    def _answer(self, server: ScriptedServer) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        last = request["messages"][-1]["content"]
        smiles = re.search(r"^SMILES: (.+)$", last, re.M).group(1)
        seed = SEED_INSTRUCTION in last
        with server.lock:
            key = ("seed" if seed else "generate", smiles)
            attempt = server.attempts[key]
            server.attempts[key] += 1
            script = ["ok"] if seed else server.scripts.get(smiles, ["ok"])
            behaviour = script[min(attempt, len(script) - 1)]
            server.log.append(
                {
                    "smiles": smiles,
                    "seed": seed,
                    "behaviour": behaviour,
                    "time": time.monotonic(),
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                    "model": request["model"],
                    "num_messages": len(request["messages"]),
                    "messages": request["messages"],
                }
            )
        if server.delay:
            time.sleep(server.delay)
        if behaviour == "drop":
            self.close_connection = True
            return
        if behaviour == "hang":
            server.release.wait(3)
            behaviour = "ok"
        if behaviour == "429":
            self._send(429, {"error": {"message": "rate limited"}}, {"Retry-After": "1"})
        elif behaviour == "500":
            self._send(500, {"error": {"message": "internal error"}})
        elif behaviour in ("400", "401"):
            self._send(int(behaviour), {"error": {"message": f"Incorrect API key provided: {KEY}"}})
        else:
            content, finish = scripted_reply(behaviour, smiles)
            usage = {"prompt_tokens": 10 * len(request["messages"]), "completion_tokens": len(content) // 4}
            choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
            self._send(200, {"id": "cmpl", "object": "chat.completion", "choices": [choice], "usage": usage})


@pytest.fixture
def server():
    instance = ScriptedServer()
    thread = threading.Thread(target=instance.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield instance
    instance.release.set()
    instance.shutdown()
    instance.server_close()


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def write_jsonl(path: Path, molecules=MOLECULES) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for index, (smiles, description) in enumerate(molecules):
            handle.write(json.dumps({"id": f"m{index:02d}", "smiles": smiles, "description": description}) + "\n")
    return path


def cli_args(server: ScriptedServer, input_path: Path, output: Path, *extra: str) -> list[str]:
    return [
        "generate-data",
        str(input_path),
        "--output",
        str(output),
        "--teacher",
        "openai",
        "--model",
        "scripted-model",
        "--base-url",
        server.base_url,
        "--api-key-env",
        KEY_ENV,
        "--timeout",
        "0.3",
        "--retries",
        "3",
        "--backoff",
        "0.01",
        "--max-backoff",
        "0.05",
        "--no-progress",
        *extra,
    ]


def summary_of(output: Path) -> dict:
    return json.loads(output.with_name(output.name + ".summary.json").read_text())


def records_by_id(output: Path) -> dict[str, dict]:
    records = read_jsonl(output)
    ids = [record["id"] for record in records]
    assert len(ids) == len(set(ids)), "a molecule was written twice"
    return {record["id"]: record for record in records}


# ---------------------------------------------------------------------------------------------------------------------
# Prompts, parser, filter
# ---------------------------------------------------------------------------------------------------------------------


def test_parser_reads_json_fenced_pairs_and_lines():
    conversation = good_conversation("CCO")
    for behaviour in ("ok", "fenced", "lines"):
        assert parse_conversation(scripted_reply(behaviour, "CCO")[0]) == conversation
    pairs = json.dumps([{"user": "Q?", "assistant": "A."}, {"question": "Q2?", "answer": "A2."}])
    assert [m["role"] for m in parse_conversation(pairs)] == ["user", "assistant", "user", "assistant"]
    with pytest.raises(ConversationFormatError) as error:
        parse_conversation("Sorry, no.")
    assert error.value.reason == "unparsable"
    with pytest.raises(ConversationFormatError) as error:
        parse_conversation('{"messages": ["just a string"]}')
    assert error.value.reason == "broken_turns"


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("ok", None),
        ("unanswered", "unanswered_question"),
        ("broken", "broken_turns"),
        ("duplicate", "duplicate_turn"),
        ("too_many", "too_many_turns"),
        ("empty_turn", "empty_turn"),
    ],
)
def test_filter_reasons(behaviour, reason):
    messages = parse_conversation(scripted_reply(behaviour, "CCO")[0])
    assert conversation_problem(messages, max_turns=3) == reason


def test_filter_is_case_and_space_insensitive_for_duplicates_and_counts_pairs():
    messages = good_conversation("CCO", pairs=3)
    assert conversation_problem(messages, max_turns=3) is None
    assert conversation_problem(messages, max_turns=2) == "too_many_turns"
    messages[2]["content"] = "  " + messages[0]["content"].upper()
    assert conversation_problem(messages, max_turns=3) == "duplicate_turn"
    assert conversation_problem([], max_turns=3) == "empty_conversation"


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------------


def test_read_chebi_tsv_skips_and_counts_bad_rows(tmp_path):
    lines = CHEBI_VALIDATION.read_text(encoding="utf-8").splitlines()[:6]
    header, first = lines[0], lines[1]
    bad = ["1\tC1CC\tA broken ring.", "2\t\tNo SMILES.", "3\tCCO\t", first]  # unparsable, empty, no text, repeat
    path = tmp_path / "chebi.txt"
    path.write_text("\n".join([header, *lines[1:], *bad]) + "\n", encoding="utf-8")
    with open(path, "ab") as handle:  # Latin-1, not UTF-8: skipped, never stored with U+FFFD in its place
        handle.write("4\tCCN\tThe molecule is caf\xe9.\n".encode("latin-1"))
    loaded = read_molecules(path, id_prefix="chebi20:")
    assert [m.id for m in loaded.molecules] == [f"chebi20:{line.split(chr(9))[0]}" for line in lines[1:]]
    assert loaded.molecules[0].smiles == first.split("\t")[1]
    assert loaded.molecules[0].description == first.split("\t")[2]
    assert dict(loaded.skipped) == {
        "invalid_smiles": 1,
        "missing_smiles": 1,
        "missing_description": 1,
        "duplicate_id": 1,
        "invalid_utf8": 1,
    }
    assert loaded.rows == 10
    assert len(read_molecules(path, limit=2).molecules) == 2


def test_read_csv_jsonl_and_dataset_inputs(tmp_path):
    path = tmp_path / "mols.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "structure", "about", "name"])
        writer.writerow(["a1", "CC(=O)O", "A short acid, with a comma.", "acetic acid"])
        writer.writerow(["a2", "not-a-smiles", "Bad.", ""])
    columns = ColumnNames(smiles="structure", description="about", iupac="name", id="key")
    loaded = read_molecules(path, columns=columns)
    assert loaded.molecules == [Molecule("a1", "CC(=O)O", "A short acid, with a comma.", "acetic acid")]
    assert loaded.skipped == Counter({"invalid_smiles": 1})
    with pytest.raises(ValueError, match="'structure'"):
        read_molecules(path)  # no smiles column under a usual name: the error names the columns

    jsonl = tmp_path / "mols.jsonl"
    jsonl.write_text('{"SMILES": "CCO", "caption": "Ethanol-like."}\n{broken\n', encoding="utf-8")
    loaded = read_molecules(jsonl)
    assert [m.id for m in loaded.molecules] == ["LFQSCWFLJHTTHZ-UHFFFAOYSA-N"]  # the InChIKey of ethanol
    assert loaded.skipped == Counter({"unreadable_row": 1})

    rows = [
        {
            "id": "x1",
            "smiles": "CCN",
            "messages": [{"role": "user", "content": "Describe it."}, {"role": "assistant", "content": "An amine."}],
            "task": "description",
            "source": "test",
            "metadata": "{}",
        }
    ]
    dataset = datasets.Dataset.from_list(rows, features=CONVERSATION_FEATURES)
    assert read_molecules(dataset).molecules == [Molecule("x1", "CCN", "An amine.", None)]
    dataset.save_to_disk(str(tmp_path / "saved"))
    assert read_molecules(tmp_path / "saved").molecules[0].description == "An amine."


# ---------------------------------------------------------------------------------------------------------------------
# The HTTP teacher
# ---------------------------------------------------------------------------------------------------------------------


def test_secret_retry_after_and_backoff_units(monkeypatch):
    secret = Secret(KEY)
    assert KEY not in repr(secret) and KEY not in str(secret) and KEY not in f"{secret}"
    assert secret.redact(f"bad key {KEY}!") == "bad key ***!"
    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 0 < parse_retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))) <= 31
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=5.0, jitter=0.25)
    rng = __import__("random").Random(0)
    delays = [policy.delay(attempt, None, rng) for attempt in range(6)]
    assert 0.75 <= delays[0] <= 1.25 and 1.5 <= delays[1] <= 2.5 and all(d <= 6.25 for d in delays)
    assert policy.delay(0, 30.0, rng) == 30.0
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    with pytest.raises(ValueError, match="http"):
        chat_completions_url("ftp://example.org")
    monkeypatch.setenv(KEY_ENV, f"{KEY} {KEY}")  # a pasted key with a space: refused without showing it
    with pytest.raises(ValueError, match=KEY_ENV) as error:
        OpenAICompatibleTeacher("m", base_url="http://127.0.0.1:9/v1", api_key_env=KEY_ENV)
    assert KEY not in str(error.value)


SCRIPTS = {
    "CCO": ["ok"],
    "CCN": ["fenced"],
    "CCC": ["lines"],
    "CCCl": ["429", "ok"],
    "c1ccccc1": ["500", "500", "ok"],
    "CC(=O)O": ["hang", "ok"],
    "CC(=O)Oc1ccccc1C(=O)O": ["drop", "ok"],
    "OCC1OC(O)C(O)C(O)C1O": ["length"],
    "CN1C=NC2=C1C(=O)N(C(=O)N2C)C": ["unanswered"],
    "CCOCC": ["duplicate"],
    "CC=O": ["too_many"],
    "NCC(=O)O": ["garbage"],
    "CCS": ["500", "500", "500", "500", "ok"],  # fails after 3 retries; the rerun's first attempt succeeds
    "CC(C)O": ["400"],
    "OC(=O)CC(=O)O": ["broken"],
}


def test_openai_pipeline_retries_filters_counts_and_hides_the_key(server, api_key, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    server.scripts = SCRIPTS
    source = write_jsonl(tmp_path / "mols.jsonl")
    output = tmp_path / "out" / "conversations.jsonl"
    argv = cli_args(server, source, output, "--max-turns", "3", "--num-exemplars", "1", "--seed-exemplars", "2")
    started = time.monotonic()
    assert main(argv) == 0
    assert time.monotonic() - started < 15

    summary = summary_of(output)
    assert summary["generated"] == 7  # ok, fenced, lines, and 429 / 500 / hang / drop after their retries
    assert summary["filtered_by_reason"] == {
        "broken_turns": 1,
        "duplicate_turn": 1,
        "too_many_turns": 1,
        "truncated_output": 1,
        "unanswered_question": 1,
        "unparsable": 1,
    }
    assert summary["filtered"] == 6
    assert summary["failed_by_reason"] == {"http_400": 1, "retries_exhausted": 1}
    assert (summary["pending"], summary["complete"], summary["stopped"]) == (0, False, None)
    assert (summary["teacher"], summary["model"], summary["prompt_version"]) == (
        "openai",
        "scripted-model",
        PROMPT_VERSION,
    )
    assert summary["exemplars"] == 2
    # 2 seed requests + one per molecule + retries: 429 (1), 500 (2), hang (1), drop (1), CCS (3)
    assert summary["this_run"]["requests"] == 2 + 15 + 1 + 2 + 1 + 1 + 3
    assert len(server.log) == summary["this_run"]["requests"]
    attempts = Counter(entry["smiles"] for entry in server.generation_requests())
    assert attempts["CCCl"] == 2 and attempts["c1ccccc1"] == 3 and attempts["CC(=O)O"] == 2 and attempts["CCS"] == 4
    assert attempts["CC(C)O"] == 1  # a 400 is not retried
    assert all(entry["num_messages"] == 4 for entry in server.generation_requests())  # system, exemplar pair, molecule
    assert all(entry["path"] == "/v1/chat/completions" for entry in server.log)
    assert all(entry["authorization"] == f"Bearer {KEY}" for entry in server.log)  # the key is sent...

    # Retry-After: 1 was honoured although the backoff is 0.01 s
    times = [entry["time"] for entry in server.generation_requests() if entry["smiles"] == "CCCl"]
    assert times[1] - times[0] >= 0.95
    assert "retry 1/3" in caplog.text

    dataset = load_generated_conversations(output)
    assert dataset.features == CONVERSATION_FEATURES and dataset.num_rows == 7
    assert set(dataset["task"]) == {"conversation"} and set(dataset["source"]) == {"generated:openai"}
    by_id = {row["id"]: row for row in dataset}
    assert by_id["m00"]["messages"] == good_conversation("CCO")
    assert by_id["m02"]["messages"] == good_conversation("CCC")  # the "User:/Assistant:" lines
    metadata = record_metadata(by_id["m00"])
    assert metadata["prompt_version"] == PROMPT_VERSION and metadata["teacher"] == "openai"
    assert metadata["finish_reason"] == "stop" and len(metadata["exemplars"]) == 1

    statuses = {s["id"]: s for s in read_jsonl(output.with_name(output.name + ".status.jsonl"))}
    assert statuses["m07"]["reason"] == "truncated_output" and statuses["m07"]["raw_output"]
    assert statuses["m13"]["status"] == "failed" and "***" in statuses["m13"]["detail"]

    # ... and never shown: not in logs, output, files, reprs, errors
    captured = capsys.readouterr()
    files = "".join(path.read_text() for path in output.parent.iterdir())
    teacher = OpenAICompatibleTeacher("m", base_url=server.base_url, api_key_env=KEY_ENV)
    for text in (caplog.text, captured.out, captured.err, files, repr(teacher), repr(vars(teacher))):
        assert KEY not in text
    assert '"generated": 7' in captured.out and "7 generated, 6 filtered" in captured.err

    # rerun: filtered and generated molecules are not asked again, failed ones are retried
    server.log.clear()
    assert main(argv) == 0
    assert sorted(entry["smiles"] for entry in server.log) == ["CC(C)O", "CCS"]
    summary = summary_of(output)
    assert (summary["generated"], summary["filtered"], summary["failed"]) == (8, 6, 1)
    assert summary["this_run"] == {**summary["this_run"], "generated": 1, "failed": 1, "requests": 2}
    assert len(records_by_id(output)) == 8


def test_requests_in_flight_never_exceed_the_concurrency(server, api_key, tmp_path):
    server.delay = 0.1  # long enough for requests to overlap
    source = write_jsonl(tmp_path / "mols.jsonl", MOLECULES[:12])
    output = tmp_path / "out.jsonl"
    argv = cli_args(server, source, output, "--num-exemplars", "0", "--concurrency", "3", "--timeout", "5")
    assert main(argv) == 0
    assert summary_of(output)["generated"] == 12 and len(server.log) == 12
    assert server.max_in_flight == 3


def test_a_molecule_with_an_iupac_name_gets_the_iupac_prompt(server, api_key, tmp_path):
    aspirin, iupac, description = "CC(=O)Oc1ccccc1C(=O)O", "2-acetyloxybenzoic acid", "An acetylated salicylic acid."
    rows = [
        {"id": "named", "smiles": aspirin, "description": description, "iupac": iupac},
        {"id": "unnamed", "smiles": "CCO", "description": "A short primary alcohol."},
    ]
    source = tmp_path / "mols.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    output = tmp_path / "out.jsonl"
    assert main(cli_args(server, source, output, "--num-exemplars", "0")) == 0

    prompts = {entry["smiles"]: entry["messages"] for entry in server.log}
    system, user = (message["content"] for message in prompts[aspirin])
    assert [message["role"] for message in prompts[aspirin]] == ["system", "user"]
    assert user.splitlines() == [
        "Molecule",
        f"SMILES: {aspirin}",
        f"IUPAC name: {iupac}",
        f"Description: {description}",
    ]
    assert "its SMILES string, a few sentences describing it, and its IUPAC name." in system
    assert "is related to, and its IUPAC name." in system
    for topic in (
        "the class of compounds it belongs to",
        "its conjugate acid or base",
        "its functional groups",
        "its chemical or biological roles",
    ):
        assert topic in system
    assert "Ask only questions that the information lets you answer with confidence" in system
    assert "leave out anything you would have to guess" in system
    assert not any("IUPAC" in message["content"] for message in prompts["CCO"])
    assert record_metadata(records_by_id(output)["named"])["context"]["iupac"] == iupac


class RecordingServer(ThreadingHTTPServer):
    """Records every request; redirects it to `redirect_to` when set, else answers with a good chat completion."""

    daemon_threads = True

    def __init__(self, redirect_to: str | None = None):
        super().__init__(("127.0.0.1", 0), RecordingHandler)
        self.redirect_to = redirect_to
        self.seen: list[tuple[str, str, str | None]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class RecordingHandler(BaseHTTPRequestHandler):
    server: RecordingServer

    def log_message(self, *args) -> None:
        pass

    def _handle(self) -> None:
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization")))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.server.redirect_to:
            body = b""
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)
        else:
            content = json.dumps({"messages": good_conversation("CCO")})
            choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            body = json.dumps({"choices": [choice]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _handle


@pytest.fixture
def recording_servers():
    """(redirecting server, the server it redirects to)."""
    target = RecordingServer()
    redirector = RecordingServer(redirect_to=f"{target.base_url}/chat/completions?stolen={KEY}")
    for instance in (target, redirector):
        threading.Thread(target=instance.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield redirector, target
    for instance in (target, redirector):
        instance.shutdown()
        instance.server_close()


def test_redirects_are_refused_and_the_key_goes_nowhere_else(recording_servers, api_key, tmp_path, capsys):
    redirector, target = recording_servers
    teacher = OpenAICompatibleTeacher(
        "m", base_url=redirector.base_url, api_key_env=KEY_ENV, retry=RetryPolicy(initial_backoff=0.001)
    )
    with pytest.raises(TeacherFatalError) as error:
        teacher.complete([{"role": "user", "content": "Hello?"}])
    message = str(error.value)
    assert error.value.reason == "redirect" and "HTTP 302" in message
    assert f"{redirector.base_url}/chat/completions" in message and f"{target.base_url}/chat/completions" in message
    assert KEY not in message
    assert redirector.seen == [("POST", "/v1/chat/completions", f"Bearer {KEY}")]  # not retried
    assert target.seen == []

    source = write_jsonl(tmp_path / "mols.jsonl", MOLECULES[:3])
    output = tmp_path / "out.jsonl"
    argv = ["generate-data", str(source), "-o", str(output), "--teacher", "openai", "--model", "m", "--no-progress"]
    assert main([*argv, "--base-url", redirector.base_url, "--api-key-env", KEY_ENV, "--num-exemplars", "0"]) == 2
    err = capsys.readouterr().err
    assert "redirect" in err and redirector.base_url in err and KEY not in err
    assert target.seen == [] and summary_of(output)["stopped"] == "fatal_error"


def test_the_teacher_client_is_its_own_not_huggingface_hubs_session(server, tmp_path, monkeypatch):
    """`InferenceClient` would send through huggingface_hub's session: blocked by HF_HUB_OFFLINE, the user's Hugging
    Face token sent when there is no key, environment proxies used for a local server. The teacher's client: none."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", "hf_user_token_never_sent")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv(KEY_ENV, raising=False)
    teacher = OpenAICompatibleTeacher("m", base_url=server.base_url, api_key_env=KEY_ENV, timeout=5)
    prompt = [{"role": "user", "content": "Molecule\nSMILES: CCO\nDescription: An alcohol."}]
    reply = teacher.complete(prompt, seed=7)
    assert reply.finish_reason == "stop" and reply.usage["prompt_tokens"] == 10
    assert server.log[0]["authorization"] is None and server.log[0]["model"] == "m"


def test_request_budget_stops_cleanly_and_a_rerun_continues(server, api_key, tmp_path, capsys):
    source = write_jsonl(tmp_path / "mols.jsonl", MOLECULES[:7])
    output = tmp_path / "out.jsonl"
    argv = cli_args(server, source, output, "--num-exemplars", "0", "--concurrency", "3")
    assert main([*argv, "--max-requests", "4"]) == 0
    summary = summary_of(output)
    assert (summary["generated"], summary["pending"], summary["stopped"]) == (4, 3, "budget_exhausted")
    assert summary["this_run"]["requests"] == 4 and len(server.log) == 4 and not summary["complete"]
    assert "request budget (4) is spent" in capsys.readouterr().err

    assert main([*argv, "--max-requests", "10"]) == 0
    summary = summary_of(output)
    assert (summary["generated"], summary["pending"], summary["stopped"], summary["complete"]) == (7, 0, None, True)
    assert summary["this_run"]["requests"] == 3
    assert sorted(Counter(entry["smiles"] for entry in server.log).values()) == [1] * 7  # none asked twice
    assert len(records_by_id(output)) == 7


def test_budget_counts_retries(server, api_key, tmp_path):
    server.scripts = {"CCO": ["500"]}
    teacher = OpenAICompatibleTeacher(
        "m",
        base_url=server.base_url,
        api_key_env=KEY_ENV,
        retry=RetryPolicy(max_retries=10, initial_backoff=0.001),
        budget=RequestBudget(3),
    )
    molecules = [Molecule("a", "CCO", "An alcohol.")]
    summary = generate_conversations(molecules, teacher, tmp_path / "o.jsonl", DataGenerationConfig(num_exemplars=0))
    assert summary["stopped"] == "budget_exhausted" and summary["pending"] == 1 and summary["failed"] == 0
    assert len(server.log) == 3


def test_rejected_key_stops_the_job_without_showing_it(server, api_key, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    server.scripts = {smiles: ["401"] for smiles, _ in MOLECULES}
    source = write_jsonl(tmp_path / "mols.jsonl", MOLECULES[:4])
    output = tmp_path / "out.jsonl"
    assert main(cli_args(server, source, output, "--num-exemplars", "0", "--concurrency", "1")) == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and f"${KEY_ENV}" in err and "Traceback" not in err
    assert KEY not in err and KEY not in caplog.text
    assert len(server.log) == 1  # the job stopped at the first refusal
    assert summary_of(output)["stopped"] == "fatal_error"


def test_refuses_to_mix_teachers_and_overwrite_starts_over(server, api_key, tmp_path, capsys):
    source = write_jsonl(tmp_path / "mols.jsonl", MOLECULES[:3])
    output = tmp_path / "out.jsonl"
    assert main(["generate-data", str(source), "-o", str(output), "--teacher", "grounded", "--no-progress"]) == 0
    before = output.read_bytes()
    argv = cli_args(server, source, output, "--num-exemplars", "0")
    assert main(argv) == 2
    assert "--allow-mixed" in capsys.readouterr().err and output.read_bytes() == before and not server.log
    assert main([*argv, "--overwrite"]) == 0
    assert set(load_generated_conversations(output)["source"]) == {"generated:openai"}


# ---------------------------------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------------------------------


KILL_SCRIPTS = {  # transient server errors (retried within the run) and answers the filter drops
    "CCN": ["500", "ok"],
    "c1ccccc1": ["500", "500", "ok"],
    "CC(=O)Oc1ccccc1C(=O)O": ["500", "ok"],
    "CCCl": ["garbage"],
    "CN1C=NC2=C1C(=O)N(C(=O)N2C)C": ["duplicate"],
}


@pytest.mark.parametrize(
    ("concurrency", "scripts"), [("1", {}), ("3", KILL_SCRIPTS)], ids=["sequential", "concurrent-with-errors"]
)
def test_sigkill_then_rerun_gives_the_uninterrupted_records(server, api_key, tmp_path, concurrency, scripts):
    server.scripts = scripts
    source = write_jsonl(tmp_path / "mols.jsonl", MOLECULES[:10])
    extra = ("--num-exemplars", "1", "--seed-exemplars", "2", "--concurrency", concurrency)
    reference = tmp_path / "reference.jsonl"
    assert main(cli_args(server, source, reference, *extra)) == 0
    expected = records_by_id(reference)
    assert len(expected) == 10 - sum(script[-1] != "ok" for script in scripts.values())

    output = tmp_path / "killed.jsonl"
    argv = cli_args(server, source, output, *extra, "--timeout", "5")
    server.attempts.clear()  # the killed run meets the scripted errors again
    server.delay = 0.2
    command = [sys.executable, "-c", "import sys; from llamo.cli import main; sys.exit(main())", *argv]
    env = {**subprocess_env(), KEY_ENV: KEY}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 900  # a busy machine needs minutes to import torch in the child
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if output.exists() and output.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.02)
        assert process.poll() is None, process.stderr.read().decode()
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(30)
    written = output.read_bytes().count(b"\n")
    assert 3 <= written < len(expected)  # killed mid-run

    server.delay = 0.0
    assert main(argv) == 0
    resumed = records_by_id(output)  # one record per molecule
    assert resumed == expected
    summary, uninterrupted = summary_of(output), summary_of(reference)
    assert summary["complete"] and summary["generated"] == len(expected)
    assert summary["filtered_by_reason"] == uninterrupted["filtered_by_reason"]
    assert summary["filtered"] == 10 - len(expected) and summary["failed"] == 0


def test_half_written_last_line_is_removed_and_redone(server, api_key, tmp_path, caplog):
    source = write_jsonl(tmp_path / "mols.jsonl", MOLECULES[:4])
    output = tmp_path / "out.jsonl"
    argv = cli_args(server, source, output, "--num-exemplars", "0")
    assert main(argv) == 0
    complete = output.read_bytes()
    lines = complete.splitlines(keepends=True)
    output.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed while writing the last
    assert len(load_generated_conversations(output)) == 3  # the loader ignores the torn line
    server.log.clear()
    assert main(argv) == 0
    assert "half-written last line" in caplog.text and len(server.log) == 1
    assert records_by_id(output) == {json.loads(line)["id"]: json.loads(line) for line in lines}
    output.write_bytes(complete + b"{not json}\n" + complete)
    with pytest.raises(ValueError, match=r"out\.jsonl:5"):
        load_generated_conversations(output)


# ---------------------------------------------------------------------------------------------------------------------
# Grounded teacher
# ---------------------------------------------------------------------------------------------------------------------


def expected_rdkit_value(key: str, mol: Chem.Mol):
    """The value of a structure fact, computed here independently of the teacher."""
    if key == "formula":
        return rdMolDescriptors.CalcMolFormula(mol)
    if key == "molecular_weight":
        return round(Descriptors.MolWt(mol), 2)
    if key == "formal_charge":
        return sum(atom.GetFormalCharge() for atom in mol.GetAtoms())
    if key == "rings":
        return {"rings": mol.GetRingInfo().NumRings(), "aromatic_rings": rdMolDescriptors.CalcNumAromaticRings(mol)}
    if key == "heavy_atoms":
        return sum(atom.GetAtomicNum() > 1 for atom in mol.GetAtoms())
    if key == "hydrogen_bonding":
        return {"donors": Lipinski.NumHDonors(mol), "acceptors": Lipinski.NumHAcceptors(mol)}
    if key == "stereocentres":
        centres = Chem.FindMolChiralCenters(mol, includeUnassigned=True, useLegacyImplementation=False)
        return {"stereocentres": len(centres), "specified": sum(label != "?" for _, label in centres)}
    if key == "components":
        return len(Chem.GetMolFrags(mol))
    return None


def test_grounded_teacher_every_answer_is_traceable_to_a_fact(tmp_path, capsys):
    rows = CHEBI_VALIDATION.read_text(encoding="utf-8").splitlines()
    subset = tmp_path / "chebi.txt"
    subset.write_text("\n".join(rows[:13]) + "\n", encoding="utf-8")
    output = tmp_path / "grounded.jsonl"
    argv = ["generate-data", str(subset), "-o", str(output), "--teacher", "grounded", "--max-turns", "6"]
    assert main([*argv, "--no-progress", "--id-prefix", "chebi20:"]) == 0
    dataset = load_generated_conversations(output)
    assert dataset.num_rows == 12 and set(dataset["source"]) == {"generated:grounded"}
    descriptions = {f"chebi20:{r.split(chr(9))[0]}": r.split("\t")[2] for r in rows[1:13]}
    keys_seen = Counter()
    for record in dataset:
        metadata = record_metadata(record)
        assert metadata["teacher"] == "grounded" and metadata["prompt_version"].startswith("llamo-grounded")
        mol = Chem.MolFromSmiles(record["smiles"])
        messages, provenance = record["messages"], metadata["provenance"]
        assert 1 <= len(messages) // 2 <= 6
        assert [p["message"] for p in provenance] == list(range(1, len(messages), 2))  # one fact per answer
        sentences = split_sentences(descriptions[record["id"]])
        for fact in provenance:
            answer = messages[fact["message"]]["content"]
            assert fact["evidence"] and all(evidence in answer for evidence in fact["evidence"])
            keys_seen[fact["key"]] += 1
            if fact["source"] == "description":
                assert all(evidence in sentences for evidence in fact["evidence"])
                assert answer == " ".join(fact["evidence"])
            elif fact["key"] == "functional_groups":
                assert all(f"{name} ({count})" in answer for name, count in fact["value"].items())
            else:
                assert fact["source"] == "rdkit" and fact["value"] == expected_rdkit_value(fact["key"], mol)
        assert messages[1]["content"] == sentences[0]  # the conversation opens with the definition
    assert keys_seen["description:definition"] == 12 and keys_seen["description:role"] > 0
    assert sum(count for key, count in keys_seen.items() if not key.startswith("description")) > 10


def test_a_full_disk_names_the_folder_keeps_the_records_and_the_rerun_continues(tmp_path, monkeypatch, capsys):
    from llamo.processing import instruction_store
    from llamo.storage import EXIT_DISK_FULL

    rows = CHEBI_VALIDATION.read_text(encoding="utf-8").splitlines()
    subset = tmp_path / "chebi.txt"
    subset.write_text("\n".join(rows[:7]) + "\n", encoding="utf-8")
    output = tmp_path / "out" / "grounded.jsonl"
    argv = ["generate-data", str(subset), "-o", str(output), "--teacher", "grounded", "--no-progress"]
    real_append = instruction_store._AppendOnlyJsonl.append

    def append_three_then_fill_the_disk(self, obj):
        if self.path == output and len(read_jsonl(output)) >= 3:
            with open(self.path, "ab") as handle:  # the disk fills in the middle of the fourth line
                handle.write(json.dumps(obj).encode()[:40])
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        real_append(self, obj)

    monkeypatch.setattr(instruction_store._AppendOnlyJsonl, "append", append_three_then_fill_the_disk)
    assert main(argv) == EXIT_DISK_FULL
    err = capsys.readouterr().err
    assert f"no space left on the disk of {output.parent} while writing conversations to grounded.jsonl" in err
    assert "The 3 conversations" in err and "Traceback" not in err
    kept = read_jsonl(output)
    assert len(kept) == 3 and not list(output.parent.glob("*.tmp*"))  # no half-written summary left

    monkeypatch.setattr(instruction_store._AppendOnlyJsonl, "append", real_append)  # space freed
    assert main(argv) == 0
    records = read_jsonl(output)
    assert len(records) == 6 and records[:3] == kept and len({record["id"] for record in records}) == 6


def test_grounded_facts_on_known_molecules():
    aspirin = Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O")
    facts = {
        fact.key: fact for fact in molecule_facts(aspirin, "An acetylated salicylic acid.", "2-acetyloxybenzoic acid")
    }
    assert facts["functional_groups"].value == {"carboxylic acid": 1, "ester": 1, "benzene ring": 1}
    assert facts["formula"].value == "C9H8O4" and facts["molecular_weight"].value == 180.16
    assert facts["iupac_name"].answer == "Its IUPAC name is 2-acetyloxybenzoic acid."
    assert facts["rings"].answer == "It has 1 ring, which is aromatic."
    salt = {fact.key: fact for fact in molecule_facts(Chem.MolFromSmiles("CC(=O)[O-].[Na+]"), "A salt.")}
    assert salt["components"].value == 2 and salt["functional_groups"].value == {"carboxylate": 1, "metal ion": 1}
    lactone = {fact.key: fact for fact in molecule_facts(Chem.MolFromSmiles("O=C1CCCO1"), "A lactone.")}
    assert lactone["functional_groups"].value == {"lactone": 1}  # the specific name only, not also an ester
    anion = {fact.key: fact for fact in molecule_facts(Chem.MolFromSmiles("CC(=O)[O-]"), "An anion.")}
    assert anion["formal_charge"].answer == "It is an anion with a net formal charge of -1."
    methane = {fact.key: fact for fact in molecule_facts(Chem.MolFromSmiles("C"), "The simplest alkane.")}
    assert "functional_groups" not in methane  # finding none of our patterns proves nothing: nothing is said
    conversation = GroundedTeacher().converse(
        aspirin, "An acid. It has a role as a drug.", "2-acetyloxybenzoic acid", 0
    )
    assert conversation == GroundedTeacher().converse(
        aspirin, "An acid. It has a role as a drug.", "2-acetyloxybenzoic acid", 0
    )
    assert any(p["key"] == "iupac_name" for p in conversation.provenance)


# ---------------------------------------------------------------------------------------------------------------------
# Local transformers teacher, CLI
# ---------------------------------------------------------------------------------------------------------------------


def test_transformers_teacher_runs_a_local_chat_model(tiny_llm_dir, tmp_path):
    from llamo.processing.teachers import TransformersTeacher

    teacher = TransformersTeacher(str(tiny_llm_dir), max_new_tokens=6, temperature=0.0, device="cpu")
    molecules = [Molecule("a", "CCO", "An alcohol."), Molecule("b", "CCN", "An amine.")]
    output = tmp_path / "local.jsonl"
    config = DataGenerationConfig(num_exemplars=1, seed_exemplars=1, show_progress=False)
    summary = generate_conversations(molecules, teacher, output, config)
    # a random model's 6 tokens are no conversation: content is not checked, the plumbing is
    assert summary["this_run"]["requests"] == 3 and summary["this_run"]["completion_tokens"] > 0
    assert summary["generated"] + summary["filtered"] == 2 and summary["failed"] == 0
    assert set(summary["filtered_by_reason"]) <= {"truncated_output", "unparsable", "broken_turns"}
    assert (summary["teacher"], summary["model"]) == ("transformers", str(tiny_llm_dir))


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate-data", "--help"])
    text = capsys.readouterr().out
    for option in ("--teacher", "--base-url", "--api-key-env", "--max-requests", "--max-turns", "--num-exemplars"):
        assert option in text


def test_missing_input_and_bad_numbers_are_clear_errors(tmp_path, capsys):
    assert (
        main(["generate-data", str(tmp_path / "none.tsv"), "-o", str(tmp_path / "o.jsonl"), "--teacher", "grounded"])
        == 2
    )
    assert "none.tsv" in capsys.readouterr().err
    source = write_jsonl(tmp_path / "m.jsonl", MOLECULES[:1])
    assert (
        main(["generate-data", str(source), "-o", "o.jsonl", "--teacher", "openai", "--model", "m", "--max-turns", "0"])
        == 2
    )
    assert "--max-turns" in capsys.readouterr().err
    assert main(["generate-data", str(source), "-o", "o.jsonl", "--teacher", "openai"]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert not os.path.exists("o.jsonl")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--backoff", "nan"),
        ("--backoff", "inf"),
        ("--max-backoff", "inf"),
        ("--timeout", "nan"),
        ("--timeout", "inf"),
        ("--timeout", "1e10"),  # finite, yet past what a socket timeout can hold
        ("--timeout", "0"),
        ("--temperature", "nan"),
        ("--temperature", "inf"),
        ("--temperature", "-1"),
    ],
)
def test_teacher_numbers_that_are_not_finite_or_in_range_are_refused_before_any_request(
    server, tmp_path, capsys, option, value
):
    source, output = write_jsonl(tmp_path / "m.jsonl", MOLECULES[:1]), tmp_path / "o.jsonl"
    assert main(cli_args(server, source, output, "--num-exemplars", "0", option, value)) == 2
    assert f"{option} must " in (err := capsys.readouterr().err) and f"got {float(value)}." in err
    assert not server.log and not output.exists()


def test_teachers_refuse_numbers_that_are_not_finite_or_in_range():
    for changes in ({"initial_backoff": float("nan")}, {"max_backoff": float("inf")}, {"initial_backoff": -1.0}):
        with pytest.raises(ValueError, match=f"{next(iter(changes))} must be from 0 to 86400 seconds"):
            RetryPolicy(**changes)
    for changes in ({"timeout": float("nan")}, {"timeout": float("inf")}, {"temperature": float("nan")}):
        with pytest.raises(ValueError, match=f"{next(iter(changes))} must be"):
            OpenAICompatibleTeacher("m", base_url="http://127.0.0.1:9/v1", api_key_env=KEY_ENV, **changes)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0, got -1"):
        build_teacher("transformers", "never-loaded", temperature=-1.0)
    policy = RetryPolicy(initial_backoff=0.0, max_backoff=0.0, jitter=0.0)
    assert policy.delay(5000, None, __import__("random").Random(0)) == 0.0  # 2**5000 once overflowed a float


def test_an_output_that_is_a_folder_is_refused_naming_it(tmp_path, capsys):
    source, folder = write_jsonl(tmp_path / "m.jsonl", MOLECULES[:1]), tmp_path / "out"
    folder.mkdir()
    argv = ["generate-data", str(source), "--teacher", "grounded", "--no-progress", "-o"]
    assert main([*argv, str(folder)]) == 2
    assert f"--output {folder} is a folder" in capsys.readouterr().err
    (tmp_path / "o.jsonl.status.jsonl").mkdir()  # a sidecar
    assert main([*argv, str(tmp_path / "o.jsonl")]) == 2
    assert f"{tmp_path / 'o.jsonl.status.jsonl'} is a folder" in capsys.readouterr().err
    before = source.read_text()  # --overwrite starts the output over: never when the output is the input
    assert main([*argv, str(source), "--overwrite"]) == 2
    assert "is the input" in capsys.readouterr().err and source.read_text() == before


def test_the_training_pipeline_generates_by_a_function_call_and_skips_a_complete_output(tmp_path, monkeypatch):
    from llamo.processing import instruction_data
    from llamo.processing.instruction_summary import read_summary
    from llamo.training.pipeline import prepare_conversations

    rows = CHEBI_VALIDATION.read_text(encoding="utf-8").splitlines()
    subset = tmp_path / "chebi.txt"
    subset.write_text("\n".join(rows[:4]) + "\n", encoding="utf-8")
    output = tmp_path / "conversations.jsonl"
    settings = {"input": str(subset), "output": str(output), "teacher": "grounded", "id_prefix": "chebi20:"}
    logged = []
    prepare_conversations({**settings, "limit": None, "max_turns": 5}, logged.append)
    summary = read_summary(output)
    assert summary["complete"] is True and summary["generated"] == 3 and summary["settings"]["max_turns"] == 5
    assert load_generated_conversations(output)["id"][0].startswith("chebi20:")
    assert any("3 generated" in line for line in logged)

    monkeypatch.setattr(instruction_data, "generate_conversations", lambda *args: pytest.fail("generated again"))
    prepare_conversations(settings, logged.append)
    assert logged[-1] == f"[pipeline] conversations already in {output}"
    with pytest.raises(ValueError, match="max_turn"):
        instruction_data.generate_from_settings({**settings, "max_turn": 5})  # a typo is refused, not ignored
    with pytest.raises(ValueError, match=r"Unknown conversations settings \['kind'\]"):
        instruction_data.generate_from_settings({**settings, "kind": "openai"})  # the key is `teacher`
    with pytest.raises(ValueError, match="needs --model"):
        instruction_data.generate_from_settings({**settings, "teacher": "openai"})
    (tmp_path / "conversations.jsonl.summary.json").write_text("{not json")
    assert read_summary(output) is None
