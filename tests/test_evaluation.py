"""llamo.evaluation: metric values checked by hand, protocols, OPSIN, resume, baselines, CLI."""

from __future__ import annotations

import csv
import json
import math
import shutil
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from llamo.cli import build_parser, main
from llamo.evaluation import EvaluationConfig, evaluate
from llamo.evaluation.data import load_rows, select_examples
from llamo.evaluation.naming import (
    inchikey,
    names_to_smiles,
    naming_metrics,
    nest_enclosing_marks,
    opsin_spellings,
    opsin_unavailable_reason,
)
from llamo.evaluation.predict import GenerationPredictor, make_predictor
from llamo.evaluation.predictions import PREDICTIONS_FILE, TSV_HEADER, PredictionRecord, Skip
from llamo.evaluation.properties import PropertyTarget, parse_number, property_metrics
from llamo.evaluation.score import TASK_TITLES, MetricResources, score_task
from llamo.evaluation.text_metrics import (
    LLAMO_PROTOCOL,
    TokenProtocol,
    compute_text_metrics,
    load_scibert_tokenizer,
    molt5_protocol,
)
from llamo.evaluation.wordnet import LEXICOGRAPHER_FILES, WordNetUnavailable, load_wordnet, setup_wordnet
from llamo.processing.schema import make_record

from .conftest import CHEBI_VALIDATION, SHARED, SMILES

SCIBERT_VOCAB = SHARED / "data" / "tokenizers" / "scibert_scivocab_uncased" / "vocab.txt"
DEBIAN_WORDNET = Path("/usr/share/wordnet")
ASPIRIN_INCHIKEY = "BSYNRYMUTXBXSQ-UHFFFAOYSA-N"

# py2opsin is a test dependency: only a missing Java runtime may skip the OPSIN tests
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="OPSIN needs Java: no `java` on PATH")


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def molt5():
    return molt5_protocol(SCIBERT_VOCAB)


@pytest.fixture(scope="session")
def nltk_data(tmp_path_factory) -> Path:
    """An NLTK data folder with WordNet installed from the Debian packages (apt-get install wordnet-base
    wordnet-sense-index, as in CI)."""
    if not DEBIAN_WORDNET.is_dir():
        pytest.skip("WordNet's Debian files are missing: apt-get install -y wordnet-base wordnet-sense-index")
    folder = tmp_path_factory.mktemp("nltk_data")
    setup_wordnet(folder, source=DEBIAN_WORDNET, download=False)
    return folder


@pytest.fixture(scope="module")
def wordnet(nltk_data):
    return load_wordnet(nltk_data)


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A case-sensitive whitespace tokenizer standing in for an LLM tokenizer."""
    words = ["The", "the", "molecule", "is", "an", "a", "acid", "base"]
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(["<unk>", *words])}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def chebi_rows(count: int) -> list[dict]:
    with open(CHEBI_VALIDATION, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        return [
            make_record(
                f"chebi20:{row['CID']}",
                row["SMILES"],
                [
                    {"role": "user", "content": "Describe this molecule."},
                    {"role": "assistant", "content": row["description"]},
                ],
                "description",
                "chebi20",
            )
            for _, row in zip(range(count), reader, strict=False)
        ]


def qa_row(record_id: str, smiles: str, task: str, answer: str, metadata: dict | None = None) -> dict:
    messages = [{"role": "user", "content": f"Question about {task}?"}, {"role": "assistant", "content": answer}]
    return make_record(record_id, smiles, messages, task, "test", metadata)


def homo(record_id: str, smiles: str, value: float, name: str = "HOMO") -> dict:
    return qa_row(record_id, smiles, "property", f"{value}", {"property": name, "value": value, "unit": "Hartree"})


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def metric_values(results: dict, task: str) -> dict[str, float]:
    entry = next(entry for entry in results["results"] if entry["task"]["name"] == task)
    return {metric["name"]: metric["value"] for metric in entry["metrics"]}


def task_entry(results: dict, task: str) -> dict:
    return next(entry for entry in results["results"] if entry["task"]["name"] == task)


# ---------------------------------------------------------------- text metrics


def test_scibert_word_pieces_of_a_known_sentence(molt5):
    tokenizer = load_scibert_tokenizer(SCIBERT_VOCAB)
    assert tokenizer.tokenize("The molecule is an acetylsalicylic acid.") == [
        "the", "molecule", "is", "an", "acetyl", "##sal", "##ic", "##ylic", "acid", ".",
    ]  # fmt: skip
    assert tokenizer.tokenize("2-Acetyloxybenzoic acid") == ["2", "-", "acetyl", "##oxy", "##benz", "##oic", "acid"]
    # the protocol drops [SEP]/[CLS]/[PAD] and keeps the first 512 tokens
    assert molt5.tokenize("[CLS] an acid [SEP] [PAD]") == ["an", "acid"]
    assert len(molt5.tokenize("acid " * 600)) == 512


def test_scibert_vocabulary_that_is_not_one_is_refused(tmp_path):
    bogus = tmp_path / "vocab.txt"
    bogus.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", encoding="utf-8")
    protocol = molt5_protocol(bogus)
    assert protocol.tokenizer is None and "acid" in protocol.unavailable_reason


def test_bleu_and_rouge_on_a_hand_checked_corpus(molt5):
    references = ["The molecule is an acid", "The molecule is an acid"]
    predictions = ["The molecule is an acid", "the molecule is a base"]
    values = compute_text_metrics(references, predictions, [molt5], wordnet_reason="not needed").values()
    # corpus counts: unigrams 8/10, bigrams 6/8, trigrams 4/6, 4-grams 2/4; equal lengths so no brevity penalty
    assert values["bleu2_molt5_scibert"] == pytest.approx(100 * math.sqrt(0.8 * 0.75))
    assert values["bleu4_molt5_scibert"] == pytest.approx(100 * (0.8 * 0.75 * (4 / 6) * 0.5) ** 0.25)
    # ROUGE F per row: perfect = 1; the other shares 3 of 5 words, 2 of 4 bigrams, an LCS of 3
    assert values["rouge1_molt5_raw_text"] == pytest.approx(100 * (1 + 0.6) / 2)
    assert values["rouge2_molt5_raw_text"] == pytest.approx(100 * (1 + 0.5) / 2)
    assert values["rougeL_molt5_raw_text"] == pytest.approx(100 * (1 + 0.6) / 2)


def test_bleu4_without_4grams_and_an_empty_prediction(molt5):
    short = compute_text_metrics(["The molecule is an acid"], ["The molecule is"], [molt5]).values()
    # 3 of 3 unigrams, 2 of 2 bigrams, brevity penalty exp(1 - 5/3); no 4-gram at all: unsmoothed BLEU-4 is ~0
    assert short["bleu2_molt5_scibert"] == pytest.approx(100 * math.exp(1 - 5 / 3))
    assert short["bleu4_molt5_scibert"] < 1e-60
    empty = compute_text_metrics(["The molecule is an acid"], [""], [molt5]).values()
    assert empty["bleu2_molt5_scibert"] == 0 and empty["bleu4_molt5_scibert"] == 0
    assert empty["rouge1_molt5_raw_text"] == 0 and empty["rougeL_molt5_raw_text"] == 0


def test_perfect_match_scores_100_without_wordnet(molt5):
    text = "The molecule is an acid"
    report = compute_text_metrics([text], [text], [molt5], None, "WordNet is not installed")
    values = report.values()
    assert values["bleu2_molt5_scibert"] == pytest.approx(100)
    assert values["bleu4_molt5_scibert"] == pytest.approx(100)
    assert values["rouge1_molt5_raw_text"] == pytest.approx(100)
    assert values["rouge2_molt5_raw_text"] == pytest.approx(100)
    assert values["rougeL_molt5_raw_text"] == pytest.approx(100)
    assert [m.name for m in report.unavailable] == ["meteor_molt5_scibert"]


def test_meteor_by_hand(molt5, wordnet):
    text = "The molecule is an acid"
    values = compute_text_metrics([text], [text], [molt5], wordnet).values()
    # METEOR on 5 aligned tokens in one chunk: F = 1, fragmentation penalty 0.5 * (1/5)^3
    assert values["meteor_molt5_scibert"] == pytest.approx(100 * (1 - 0.5 / 5**3))
    # half the words: P = R = 1/2, 2 chunks for 2 matches -> penalty 0.5
    half = compute_text_metrics(["an acid is here"], ["an base is there"], [molt5], wordnet).values()
    assert half["meteor_molt5_scibert"] == pytest.approx(100 * 0.5 * (1 - 0.5))
    empty = compute_text_metrics([text], [""], [molt5], wordnet).values()
    assert empty["meteor_molt5_scibert"] == 0


def test_llamo_protocol_uses_the_llm_tokenizer(molt5):
    llm = TokenProtocol(LLAMO_PROTOCOL, word_tokenizer())
    values = compute_text_metrics(["The molecule is an acid"], ["the molecule is an acid"], [molt5, llm]).values()
    assert values["bleu2_molt5_scibert"] == pytest.approx(100)  # SciBERT lower-cases
    # case-sensitive LLM tokens: 4 of 5 unigrams, 3 of 4 bigrams
    assert values["bleu2_llamo_llm_tokens"] == pytest.approx(100 * math.sqrt(0.8 * 0.75))
    assert set(values) >= {"bleu4_llamo_llm_tokens", "bleu4_molt5_scibert"}


def test_meteor_is_unavailable_without_wordnet(tmp_path, molt5):
    with pytest.raises(WordNetUnavailable, match="setup-wordnet"):
        load_wordnet(tmp_path)
    report = compute_text_metrics(["an acid"], ["an acid"], [molt5], None, "WordNet is not installed")
    assert "meteor_molt5_scibert" not in report.values()
    assert [(m.name, m.reason) for m in report.unavailable] == [("meteor_molt5_scibert", "WordNet is not installed")]


def test_setup_wordnet_writes_lexnames_and_is_idempotent(nltk_data, tmp_path):
    target = nltk_data / "corpora" / "wordnet"
    lines = (target / "lexnames").read_text().splitlines()
    assert len(lines) == 45 == len(LEXICOGRAPHER_FILES)
    assert lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1" and lines[44] == "44\tadj.ppl\t3"
    assert load_wordnet(nltk_data).synsets("dog")
    before = (target / "data.noun").stat().st_mtime_ns
    assert setup_wordnet(nltk_data, source=DEBIAN_WORDNET) == target
    assert (target / "data.noun").stat().st_mtime_ns == before
    with pytest.raises(FileNotFoundError, match="apt-get install -y wordnet-base wordnet-sense-index"):
        setup_wordnet(tmp_path / "elsewhere", source=tmp_path, download=False)


def test_setup_wordnet_downloads_first_and_falls_back_quickly(nltk_data, tmp_path, monkeypatch):
    import nltk

    from llamo.evaluation import wordnet as wordnet_module

    calls = []

    def fake_download(package, download_dir, **options):  # NLTK's package: WordNet's files, lexnames included
        calls.append(package)
        shutil.copytree(nltk_data / "corpora" / "wordnet", Path(download_dir) / "corpora" / "wordnet")
        return True

    monkeypatch.setattr(wordnet_module, "_server_answers", lambda url, timeout: True)
    monkeypatch.setattr(nltk, "download", fake_download)
    downloaded = tmp_path / "downloaded"
    assert setup_wordnet(downloaded, source=tmp_path / "no-debian-files") == downloaded / "corpora" / "wordnet"
    assert calls == ["wordnet"] and load_wordnet(downloaded).synsets("dog")

    def refused(package, download_dir, **options):
        raise ValueError("Error loading wordnet: <urlopen error no address>")

    monkeypatch.setattr(nltk, "download", refused)
    assert setup_wordnet(tmp_path / "refused", source=DEBIAN_WORDNET).name == "wordnet"  # the Debian copy

    def stalled_lookup(*args, **kwargs):  # an offline resolver that never answers
        time.sleep(5)
        raise TimeoutError("no answer")

    monkeypatch.undo()  # offline: the real probe gives up within the timeout and the Debian files are copied
    monkeypatch.setattr(socket, "create_connection", stalled_lookup)
    monkeypatch.setattr(nltk, "download", lambda *args, **kwargs: pytest.fail("downloaded without a server"))
    started = time.monotonic()
    assert wordnet_module.download_wordnet(tmp_path / "offline", timeout=0.2) is None
    assert time.monotonic() - started < 2
    assert (setup_wordnet(tmp_path / "offline", source=DEBIAN_WORDNET, timeout=0.2) / "lexnames").is_file()


# ---------------------------------------------------------------- IUPAC names and properties


@needs_java
def test_opsin_round_trip_on_known_names():
    assert opsin_unavailable_reason() is None
    smiles = names_to_smiles(["2-acetyloxybenzoic acid", "not a chemical name", "", "ethanol\tcolumn"])
    assert inchikey(smiles[0]) == ASPIRIN_INCHIKEY == inchikey(SMILES["aspirin"])
    assert smiles[1] is None and smiles[2] is None
    assert smiles[3] is None  # a tab is not allowed to split a name into OPSIN's identifier column
    # PubChem's spelling: lower-case heteroatom locants, components separated by semicolons
    pubchem = ["n,n-dimethylaniline;hydrochloride", "n,n-dimethylaniline", "o-xylene", "2-methoxy-n-methyl-ethanamine"]
    keys = [inchikey(found) for found in names_to_smiles(pubchem)]
    assert keys == [inchikey("CN(C)c1ccccc1.Cl"), inchikey("CN(C)c1ccccc1"), inchikey("Cc1ccccc1C"), inchikey("COCCNC")]
    assert opsin_spellings("o-xylene") == ("o-xylene", "O-xylene")
    assert opsin_spellings("2-(n,n'-diethyl)  s-methyl;p-cresol") == (
        "2-(n,n'-diethyl) s-methyl p-cresol",
        "2-(N,N'-diethyl) S-methyl P-cresol",
    )


def test_names_nest_their_enclosing_marks_as_iupac_does():
    assert nest_enclosing_marks("2-((2-hydroxyethyl)(methyl)amino)ethan-1-ol") == (
        "2-[(2-hydroxyethyl)(methyl)amino]ethan-1-ol"
    )
    deep = "1-((1-((1-((1-methoxypropan-2-yl)oxy)propan-2-yl)oxy)propan-2-yl)oxy)butan-2-ol"
    assert (
        nest_enclosing_marks(deep) == "1-{[1-({1-[(1-methoxypropan-2-yl)oxy]propan-2-yl}oxy)propan-2-yl]oxy}butan-2-ol"
    )
    assert nest_enclosing_marks("(1S,2S)-1,2-bis((4R)-2,2-dimethyl-1,3-dioxolan-4-yl)ethane-1,2-diol") == (
        "(1S,2S)-1,2-bis[(4R)-2,2-dimethyl-1,3-dioxolan-4-yl]ethane-1,2-diol"
    )
    # fusion, von Baeyer and ring-assembly brackets are kept, and do not count as a level
    steroid = "1-((2R)-6-methylheptan-2-yl)-1H-cyclopenta[a]phenanthren-7-yl heptanoate"
    assert nest_enclosing_marks(steroid) == "1-[(2R)-6-methylheptan-2-yl]-1H-cyclopenta[a]phenanthren-7-yl heptanoate"
    for kept in ("1-([1,1'-biphenyl]-4-yl)ethan-1-one", "bicyclo[2.2.1]heptan-2-ol", "sulfur(3+)", "ethanol"):
        assert nest_enclosing_marks(kept) == kept
    for unbalanced in ("2-((methyl)amino", "2-(methyl))amino", "a]b((c)d)"):
        assert nest_enclosing_marks(unbalanced) == unbalanced


@needs_java
def test_the_namer_answers_iupac_nesting_and_hints_keep_its_own_spelling():
    pytest.importorskip("openclatura")
    from llamo.retrieval import name_hinter, opsin_checker, rule_namer

    smiles = "OCCN(C)CCO"
    own, nested = rule_namer(iupac_nesting=False)(smiles), rule_namer()(smiles)
    assert "((" in own and nested == nest_enclosing_marks(own) != own
    assert opsin_checker()([own, nested]) == [inchikey(smiles)] * 2  # the same molecule, read back by OPSIN
    assert name_hinter(opsin_checker())(smiles) == own


@needs_java
def test_naming_metrics_see_structure_beyond_wording(molt5):
    targets = [SMILES["aspirin"], SMILES["aspirin"], "CCO", "CCO"]
    references = ["2-acetyloxybenzoic acid", "2-acetyloxybenzoic acid", "ethanol", "ethanol"]
    predictions = ["2-acetoxybenzoic acid", " 2-acetyloxybenzoic acid ", "methanol", "gibberish"]
    report, counts = naming_metrics(targets, references, predictions, [molt5])
    values = report.values()
    assert values["exact_match_normalized"] == pytest.approx(25)
    assert values["parse_rate_opsin"] == pytest.approx(75)
    assert values["structure_match_opsin_inchikey"] == pytest.approx(50)
    assert counts == {
        "exact_matches": 1,
        "opsin_parsed": 3,
        "structure_matches": 2,
        "connectivity_matches": 2,
        "targets_without_inchikey": 0,
    }
    assert [m.name for m in report.unavailable] == ["meteor_molt5_scibert"]


def test_iupac_exact_match_ignores_case_and_whitespace(molt5):
    # PubChem's names are lower-case: a correctly cased prediction is right; another name stays wrong
    references = ["3,4-dihydro-2h-naphthalen-1-one", "2-acetyloxybenzoic acid", "ethanol"]
    predictions = ["3,4-Dihydro-2H-naphthalen-1-one", " 2-Acetyloxybenzoic\t acid\n", "methanol"]
    report, counts = naming_metrics(["O=C1CCCc2ccccc21", SMILES["aspirin"], "CCO"], references, predictions, [molt5])
    assert report.values()["exact_match_normalized"] == pytest.approx(200 / 3) and counts["exact_matches"] == 2
    assert "exact_match_stripped" not in report.values()


def test_cards_name_the_normalized_exact_match_and_still_read_the_old_name():
    from llamo.hub_cards.results import metric_display_name

    new = metric_display_name({"name": "exact_match_normalized", "type": "exact_match"})
    old = metric_display_name({"name": "exact_match_stripped", "type": "exact_match"})
    assert new == "Exact match (case and whitespace ignored)"
    assert old == "Exact match (surrounding whitespace ignored)"


def test_parse_number():
    assert parse_number("-0.2541") == pytest.approx(-0.2541)
    assert parse_number("The HOMO is -0.2345 Hartree.") == pytest.approx(-0.2345)
    assert parse_number("The HOMO energy is \u22120.25 Hartree.") == pytest.approx(-0.25)
    assert parse_number("2.5e-1 Ha") == pytest.approx(0.25)
    assert parse_number("HOMO: (-0.3)") == pytest.approx(-0.3)
    assert parse_number("unknown") is None and parse_number("") is None
    # digits inside a formula or a name are no number; two numbers are no single answer
    for text in ("C6H6", "H2O", "2-methylpropane", "1.2.3", "-0.25 Hartree (-6.8 eV)", "0.1\u20130.2"):
        assert parse_number(text) is None, text


def test_property_answers_must_be_numbers_and_unanswered_rows_count_as_invalid():
    targets = [PropertyTarget("homo", -0.25)] * 4
    report, counts = property_metrics(targets, ["The HOMO is -0.2345 Hartree.", "C6H6", None, "-0.2"])
    values = report.values()
    assert values["valid_ratio"] == pytest.approx(50) and values["valid_ratio_homo"] == pytest.approx(50)
    assert values["mae_hartree"] == pytest.approx((0.0155 + 0.05) / 2)
    assert (counts["rows"], counts["valid"], counts["invalid"], counts["unanswered"]) == (4, 2, 2, 1)
    assert counts["per_property"]["homo"]["unanswered"] == 1


def test_property_mae_beside_the_valid_ratio_for_garbage_answers():
    targets = [PropertyTarget("homo", -0.25), PropertyTarget("homo", -0.30), PropertyTarget("lumo", 0.02)] * 2
    predictions = ["-0.24", "it is low", "0.05", "", "-0.35", "\u00bf?"]
    report, counts = property_metrics(targets, predictions)
    values = report.values()
    assert values["mae_homo_hartree"] == pytest.approx((0.01 + 0.05) / 2)
    assert values["valid_ratio_homo"] == pytest.approx(50)
    assert values["mae_lumo_hartree"] == pytest.approx(0.03)
    assert values["valid_ratio_lumo"] == pytest.approx(50)
    assert values["mae_hartree"] == pytest.approx((0.01 + 0.05 + 0.03) / 3)
    assert values["valid_ratio"] == pytest.approx(50)
    assert (counts["rows"], counts["valid"], counts["invalid"], counts["unanswered"]) == (6, 3, 3, 0)
    garbage, counts = property_metrics(targets[:2], ["no idea", "???"])
    assert garbage.values() == {"valid_ratio_homo": 0, "valid_ratio": 0}
    assert {m.name for m in garbage.unavailable} == {"mae_homo_hartree", "mae_hartree"}


# ---------------------------------------------------------------- data


def test_data_sources_agree_and_bad_rows_are_counted(tmp_path):
    import datasets

    from llamo.processing.schema import CONVERSATION_FEATURES

    turns = ["Describe it.", "An alcohol.", "Its IUPAC name?", "ethanol"]
    roles = ["user", "assistant"] * 2
    messages = [{"role": role, "content": text} for role, text in zip(roles, turns, strict=True)]
    chat = make_record("c:1", "CCO", messages, "conversation", "t")
    good = [homo("q:1", "CCO", -0.25), qa_row("n:1", "CCO", "iupac", "ethanol"), chat]
    bad = [
        qa_row("n:2", "C1CC", "iupac", "broken ring"),
        {**qa_row("n:3", "CCO", "iupac", "x"), "messages": [{"role": "user", "content": "Name it."}]},
        qa_row("n:1", "CCO", "iupac", "ethanol again"),
        qa_row("q:2", "CCO", "property", "no number here", {"property": "HOMO"}),
    ]
    rows = good + bad
    jsonl = write_jsonl(tmp_path / "rows.jsonl", rows)
    dataset = datasets.Dataset.from_list(rows, features=CONVERSATION_FEATURES)
    dataset.save_to_disk(str(tmp_path / "disk"))
    for source in (jsonl, tmp_path / "disk", dataset):
        loaded, info = load_rows(source)
        examples, skipped = select_examples(loaded)
        assert info.num_rows == 7
        assert [e.key for e in examples] == [("property", "q:1"), ("iupac", "n:1"), ("conversation", "c:1")]
        assert [row.reason for row in skipped] == [
            "unparsable SMILES",
            "no assistant answer to compare with",
            "duplicate id",
            "no numeric target (metadata value or number in the reference)",
        ]
    assert examples[0].target == PropertyTarget("homo", -0.25, "Hartree")
    assert examples[1].chat_messages()[0]["content"][0] == {"type": "molecule", "smiles": "CCO"}
    # the reference is the last assistant turn; the prompt is everything before it
    assert examples[2].reference == "ethanol"
    assert [m["content"] for m in examples[2].prompt] == turns[:3]
    assert examples[2].chat_messages()[2] == {"role": "user", "content": "Its IUPAC name?"}
    with pytest.raises(ValueError, match="tasks present: conversation, iupac, property"):
        select_examples(loaded, tasks=["description"])
    with pytest.raises(ValueError, match=r"tasks present: conversation, iupac, property, x{40}\.$"):
        select_examples([*loaded, {"task": "x" * 5000}], tasks=["description"])
    with pytest.raises(FileNotFoundError):
        load_rows(tmp_path / "missing.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"id": 1}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        load_rows(tmp_path / "broken.jsonl")


# ---------------------------------------------------------------- runs with the tiny model


@pytest.fixture(scope="module")
def eval_rows() -> list[dict]:
    return [*chebi_rows(6), homo("q:1", "CCO", -0.25), homo("q:2", "CCCO", 0.02, "LUMO")]


def run_config(output_dir: Path, model_dir, data, nltk_data=None, **changes) -> EvaluationConfig:
    settings = {
        "output_dir": str(output_dir),
        "model": str(model_dir),
        "data": str(data),
        "batch_size": 2,
        "max_new_tokens": 4,
        "scibert_vocab": str(SCIBERT_VOCAB),
        "nltk_data": str(nltk_data) if nltk_data else None,
        "progress": False,
    }
    return EvaluationConfig(**{**settings, **changes})


class Interrupted(Exception):
    pass


def stop_after_first_batch(done: int, total: int) -> None:
    raise Interrupted(f"stopped after {done} of {total}")


def test_resume_after_an_interrupted_run(tmp_path, tiny_llamo_dir, eval_rows):
    data = write_jsonl(tmp_path / "data.jsonl", eval_rows)
    nltk_data = tmp_path / "no-wordnet"  # METEOR is reported unavailable; the run needs no WordNet
    resumed = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        evaluate(run_config(resumed, tiny_llamo_dir, data, nltk_data), callback=stop_after_first_batch)
    saved = (resumed / PREDICTIONS_FILE).read_text().splitlines()
    assert len(saved) == 2
    # the run was killed while writing its next line
    with open(resumed / PREDICTIONS_FILE, "a", encoding="utf-8") as handle:
        handle.write('{"index": 3, "id": "chebi20:')

    calls = []
    results = evaluate(run_config(resumed, tiny_llamo_dir, data, nltk_data), callback=lambda d, t: calls.append(d))
    assert calls == [4, 6, 8]  # only the 6 missing rows were predicted
    lines = [json.loads(line) for line in (resumed / PREDICTIONS_FILE).read_text().splitlines()]
    keys = [(line["task"], line["id"]) for line in lines]
    assert len(keys) == len(set(keys)) == len(eval_rows)
    assert lines[:2] == [json.loads(line) for line in saved]

    straight = evaluate(run_config(tmp_path / "straight", tiny_llamo_dir, data, nltk_data))
    assert results["results"] == straight["results"]
    by_key = {(line["task"], line["id"]): line["prediction"] for line in lines}
    for line in (tmp_path / "straight" / PREDICTIONS_FILE).read_text().splitlines():
        record = json.loads(line)
        assert by_key[(record["task"], record["id"])] == record["prediction"]

    values = metric_values(results, "description")
    assert {"bleu2_molt5_scibert", "bleu4_llamo_llm_tokens", "rouge1_molt5_raw_text"} <= set(values)
    unavailable = {m["name"]: m["reason"] for m in task_entry(results, "description")["unavailable_metrics"]}
    assert set(unavailable) == {"meteor_molt5_scibert", "meteor_llamo_llm_tokens"}
    assert "WordNet" in unavailable["meteor_molt5_scibert"]
    assert "valid_ratio" in metric_values(results, "property")
    assert results["decoding"]["strategy"] == "greedy" and results["decoding"]["max_new_tokens"] == 4
    tsv = (resumed / "predictions.description.tsv").read_text().splitlines()
    assert tsv[0] == "\t".join(TSV_HEADER) and len(tsv) == 7
    assert tsv[1].split("\t")[0] == eval_rows[0]["smiles"]  # dataset order
    assert json.loads((resumed / "results.json").read_text())["results"] == results["results"]


def chain_rows(count: int) -> list[dict]:
    """Rows whose prompts grow with their position: a longest-first order would take the last rows first."""
    return [qa_row(f"chain:{i}", "C" * (i + 1), "description", f"alkane {i}") for i in range(count)]


class StubPredictor:
    """Answers each row with its reference at once, noting the CPU threads it ran with."""

    def __init__(self):
        self.threads: list[int] = []

    def __call__(self, batch):
        import torch

        self.threads.append(torch.get_num_threads())
        return [example.reference for example in batch]


@pytest.fixture
def stub_predictor(monkeypatch) -> StubPredictor:
    from llamo.evaluation import predict

    predictor = StubPredictor()
    monkeypatch.setattr(predict, "make_predictor", lambda *args: predictor)
    return predictor


def stop_after(rows: int):
    def callback(done: int, total: int) -> None:
        if done >= rows:
            raise Interrupted(f"stopped after {done} of {total}")

    return callback


def saved_ids(output_dir: Path) -> set[str]:
    return {json.loads(line)["id"] for line in (output_dir / PREDICTIONS_FILE).read_text().splitlines()}


def test_a_stopped_run_holds_a_prefix_of_the_data_not_its_longest_rows(tmp_path, stub_predictor):
    from llamo.evaluation.predict import SORT_WINDOW_BATCHES

    data = write_jsonl(tmp_path / "data.jsonl", chain_rows(40))
    window = 2 * SORT_WINDOW_BATCHES
    for stop, out in ((2, tmp_path / "one-batch"), (window, tmp_path / "one-window")):
        with pytest.raises(Interrupted):
            evaluate(run_config(out, "stub-model", data), callback=stop_after(stop))
        saved = saved_ids(out)
        assert len(saved) == stop and saved <= {f"chain:{i}" for i in range(window)}  # inside the first window
    assert saved == {f"chain:{i}" for i in range(window)}  # a whole window: exactly the first rows of the data
    with pytest.raises(Interrupted):  # resumed: the next window, again in the data's order
        evaluate(run_config(out, "stub-model", data), callback=stop_after(2 * window))
    assert saved_ids(out) == {f"chain:{i}" for i in range(2 * window)}


def test_a_rerun_with_other_settings_is_refused_naming_them(tmp_path, stub_predictor, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", chain_rows(8))
    out = tmp_path / "out"
    with pytest.raises(Interrupted):
        evaluate(run_config(out, "stub-model", data, max_rows=4), callback=stop_after(2))
    with pytest.raises(FileExistsError, match=r"max_rows \(saved 4, now 6\).*--overwrite"):
        evaluate(run_config(out, "stub-model", data, max_rows=6))
    with pytest.raises(FileExistsError, match=r"model_path \(saved \"stub-model\", now \"other-model\"\)"):
        evaluate(run_config(out, "other-model", data, max_rows=4))
    with pytest.raises(Interrupted):  # the same settings resume
        evaluate(run_config(out, "stub-model", data, max_rows=4), callback=stop_after(4))
    assert len(saved_ids(out)) == 4
    common = ["--data", str(data), "--output-dir", str(out), "--no-progress"]
    assert main(["evaluate", "stub-model", *common, "--max-rows", "5"]) == 2
    assert "max_rows (saved 4, now 5)" in capsys.readouterr().err


def test_a_full_disk_names_the_folder_keeps_the_predictions_and_the_rerun_resumes(
    tmp_path, stub_predictor, monkeypatch, capsys
):
    import errno

    from llamo.evaluation.predictions import PredictionStore
    from llamo.storage import EXIT_DISK_FULL

    data = write_jsonl(tmp_path / "data.jsonl", chain_rows(6))
    out = tmp_path / "out"
    real_append = PredictionStore.append

    def append_one_batch_then_fill_the_disk(self, records):
        records = list(records)
        if self.predictions_path.is_file():  # the second batch: the disk fills in the middle of its first line
            with open(self.predictions_path, "a", encoding="utf-8") as handle:
                handle.write(records[0].to_json()[:30])
            raise OSError(errno.ENOSPC, "No space left on device", str(self.predictions_path))
        real_append(self, records)

    monkeypatch.setattr(PredictionStore, "append", append_one_batch_then_fill_the_disk)
    argv = ["evaluate", "stub-model", "--data", str(data), "--output-dir", str(out), "--batch-size", "2"]
    argv += ["--max-new-tokens", "4"]  # the settings of `run_config`, which resumes below
    assert main([*argv, "--no-progress"]) == EXIT_DISK_FULL
    err = capsys.readouterr().err
    assert f"no space left on the disk of {out} while writing the predictions" in err and "Traceback" not in err
    assert "The 2 predictions" in err
    first = (out / PREDICTIONS_FILE).read_text().splitlines()[:2]

    monkeypatch.setattr(PredictionStore, "append", real_append)  # space freed
    with pytest.raises(Interrupted):  # (stopped before scoring: the stub model has no tokenizer)
        evaluate(run_config(out, "stub-model", data, batch_size=2), callback=stop_after(6))
    lines = (out / PREDICTIONS_FILE).read_text().splitlines()
    assert lines[:2] == first and len(lines) == len(saved_ids(out)) == 6


def test_threads_follow_the_option_then_omp_num_threads_then_the_free_cores(tmp_path, stub_predictor, monkeypatch):
    import os

    import torch

    from llamo.evaluation.predict import choose_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 1.0, 1.0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_threads()[0] == 1  # 4 cores, 2.6 busy
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 1.0, 1.0))
    assert choose_threads() == (4, "4 cores, 1-minute load 0.2")
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 1.0, 1.0))
    assert choose_threads()[0] == 1  # never fewer than one
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads() == (3, "OMP_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "5000")  # thousands of threads crash torch's thread pool
    assert choose_threads() == (256, "OMP_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(2) == (2, "--threads")

    before = torch.get_num_threads()
    data = write_jsonl(tmp_path / "data.jsonl", chain_rows(2))
    with pytest.raises(Interrupted):
        evaluate(run_config(tmp_path / "out", "stub-model", data, threads=2), callback=stop_after(2))
    assert stub_predictor.threads == [2] and torch.get_num_threads() == before  # set for the run, then restored
    args = build_parser().parse_args(["evaluate", "M", "--data", "d", "--output-dir", "o", "--threads", "5"])
    assert args.threads == 5


def test_evaluation_answers_as_the_pipeline_does(tmp_path, tiny_llamo, tiny_llamo_dir, eval_rows):
    """A row gets the same answer from `evaluate` as from the pipeline (`llamo generate`'s path), settings alike."""
    from transformers import pipeline

    model, processor = tiny_llamo
    pipe = pipeline("molecule-text-generation", model=model, processor=processor, device="cpu")
    rows = [*eval_rows[:2], eval_rows[-1], qa_row("n:1", "CCO", "iupac", "ethanol")]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    settings = {"max_new_tokens": 32, "num_beams": 2, "answer_loop_repeats": 2}  # the guard ends the first answer
    evaluate(
        run_config(tmp_path / "out", tiny_llamo_dir, data, batch_size=4, **settings), model=model, processor=processor
    )
    saved = [json.loads(line) for line in (tmp_path / "out" / PREDICTIONS_FILE).read_text().splitlines()]
    predicted = {row["id"]: row["prediction"] for row in saved}
    questions = [{"smiles": row["smiles"], "text": row["messages"][0]["content"]} for row in rows]
    answered = pipe(questions, batch_size=4, **settings)  # one batch, as in the evaluation
    assert predicted == {row["id"]: group[0]["generated_text"] for row, group in zip(rows, answered, strict=True)}

    def checker(names):  # the second candidate names the molecule
        return [None, inchikey("CCO"), None, None][: len(names)]

    examples, _ = select_examples(rows[-1:])
    verified = GenerationPredictor(model, processor, {"max_new_tokens": 4}, name_checker=checker)(examples)
    expected = pipe(questions[-1], max_new_tokens=4, verify_names=checker)[0]
    assert expected["verified"] and verified == [expected["generated_text"]] == [expected["candidates"][1]]


def test_generation_reports_every_step_of_a_batch(tiny_llamo, eval_rows):
    model, processor = tiny_llamo
    examples, _ = select_examples(eval_rows[:2])
    steps = []
    predictor = GenerationPredictor(model, processor, {"max_new_tokens": 3, "min_new_tokens": 3})
    predictor.on_step = lambda tokens, finished, rows: steps.append((tokens, rows))
    answers = predictor(examples)
    assert steps == [(1, 2), (2, 2), (3, 2)] and len(answers) == 2


def test_evaluate_help_shows_one_default_per_option(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--split SPLIT split of a folder or Hub dataset (default: test) --task" in text
    assert "(default: None)" not in text and "--batch-size BATCH_SIZE rows generated together (default: 16)" in text


CARD_NAMES = {
    "bleu2_molt5_scibert": "BLEU-2 (MolT5 protocol, SciBERT tokens)",
    "bleu4_molt5_scibert": "BLEU-4 (MolT5 protocol, SciBERT tokens)",
    "bleu2_llamo_llm_tokens": "BLEU-2 (LLaMo protocol, LLM tokens)",
    "bleu4_llamo_llm_tokens": "BLEU-4 (LLaMo protocol, LLM tokens)",
    "rouge1_molt5_raw_text": "ROUGE-1 (MolT5 protocol, raw text)",
    "rouge2_molt5_raw_text": "ROUGE-2 (MolT5 protocol, raw text)",
    "rougeL_molt5_raw_text": "ROUGE-L (MolT5 protocol, raw text)",
    "mae_homo_hartree": "MAE, HOMO (Hartree, valid answers only)",
    "mae_lumo_hartree": "MAE, LUMO (Hartree, valid answers only)",
    "mae_hartree": "MAE, all properties (Hartree, valid answers only)",
    "valid_ratio_homo": "Valid-answer ratio, HOMO (%)",
    "valid_ratio_lumo": "Valid-answer ratio, LUMO (%)",
    "valid_ratio": "Valid-answer ratio, all properties (%)",
}


def test_results_file_feeds_the_model_card(tmp_path, tiny_llamo_dir, eval_rows):
    from llamo.hub_cards.results import load_results, model_index_results

    data = write_jsonl(tmp_path / "data.jsonl", eval_rows)
    evaluate(run_config(tmp_path / "out", tiny_llamo_dir, data, tmp_path / "no-wordnet"))
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    entries = model_index_results([load_results(tmp_path / "out" / "results.json")])
    by_name = {(entry.dataset_config, entry.metric_name): entry for entry in entries}
    reported = [(task["task"]["name"], metric) for task in written["results"] for metric in task["metrics"]]
    assert len(entries) == len(by_name) == len(reported)
    names = {metric["name"] for _, metric in reported}
    # an untrained model's answers may hold no number: only the MAE may then be missing
    assert set(CARD_NAMES) - names <= {"mae_homo_hartree", "mae_lumo_hartree", "mae_hartree"}
    for task, metric in reported:
        entry = by_name[(task, CARD_NAMES[metric["name"]])]
        assert entry.metric_value == round(metric["value"], 4)
        assert entry.metric_type == metric["type"] and entry.metric_config == metric.get("protocol")
        assert entry.task_name == TASK_TITLES[task] and entry.dataset_name == "data"
    assert not any("METEOR" in entry.metric_name for entry in entries)  # unavailable: no number in the card


def test_output_dir_of_another_run_is_not_reused(tmp_path, tiny_llamo_dir, eval_rows):
    data = write_jsonl(tmp_path / "data.jsonl", eval_rows[:2])
    evaluate(run_config(tmp_path / "out", tiny_llamo_dir, data, max_new_tokens=2))
    with pytest.raises(FileExistsError, match=r"decoding\.max_new_tokens"):
        evaluate(run_config(tmp_path / "out", tiny_llamo_dir, data, max_new_tokens=3))
    results = evaluate(run_config(tmp_path / "out", tiny_llamo_dir, data, max_new_tokens=3, overwrite=True))
    assert results["decoding"]["max_new_tokens"] == 3
    assert len((tmp_path / "out" / PREDICTIONS_FILE).read_text().splitlines()) == 2


def test_specialist_run_and_skipped_rows(tmp_path, tiny_llamo_dir, eval_rows):
    rows = [*eval_rows[:3], qa_row("chebi20:bad", "C1CC", "description", "A broken ring.")]
    data = write_jsonl(tmp_path / "data.jsonl", [*rows, homo("q:9", "CCO", -0.2)])
    no_wordnet = tmp_path / "no-wordnet"
    results = evaluate(run_config(tmp_path / "out", tiny_llamo_dir, data, no_wordnet, tasks=["description"]))
    assert [entry["task"]["name"] for entry in results["results"]] == ["description"]
    counts = task_entry(results, "description")["counts"]
    assert (counts["rows"], counts["predicted"], counts["skipped"]) == (4, 3, 1)
    assert counts["skipped_reasons"] == {"unparsable SMILES": 1}
    entry = task_entry(results, "description")
    assert {m["name"] for m in entry["unavailable_metrics"]} == {"meteor_molt5_scibert", "meteor_llamo_llm_tokens"}
    assert all(isinstance(m["value"], float) for m in entry["metrics"])


def test_no_graph_ablation_runs_without_graph_tokens(tmp_path, tiny_llamo, tiny_llamo_dir, eval_rows):
    model, processor = tiny_llamo
    examples, _ = select_examples(eval_rows[:2])
    with_graph = GenerationPredictor(model, processor, {"max_new_tokens": 2})._render(examples)
    without = GenerationPredictor(model, processor, {"max_new_tokens": 2}, include_graph=False)._render(examples)
    assert "atom_features" in with_graph and "atom_features" not in without
    assert (without["input_ids"] == processor.graph_token_id).sum() == 0

    data = write_jsonl(tmp_path / "data.jsonl", eval_rows)
    results = evaluate(run_config(tmp_path / "out", tiny_llamo_dir, data, baseline="no-graph"))
    assert results["model"]["evaluated"] == "baseline:no-graph"
    assert task_entry(results, "description")["counts"]["predicted"] == 6
    lines = (tmp_path / "out" / PREDICTIONS_FILE).read_text().splitlines()
    assert all(json.loads(line)["prediction"] is not None for line in lines)


def test_rows_the_processor_refuses_are_skipped_not_fatal(tiny_llamo):
    model, processor = tiny_llamo
    rows = [qa_row("s:1", "CCO", "description", "An alcohol."), qa_row("s:2", SMILES["aspirin"], "description", "x")]
    examples, _ = select_examples(rows)
    limit = processor.max_atoms
    processor.max_atoms = 5
    try:
        answers = GenerationPredictor(model, processor, {"max_new_tokens": 2})(examples)
    finally:
        processor.max_atoms = limit
    assert isinstance(answers[0], str)
    assert isinstance(answers[1], Skip) and "13 atoms" in answers[1].reason


def test_refused_and_unparsable_property_rows_count_against_the_valid_ratio():
    rows = [homo("q:1", "CCO", -0.25), homo("q:2", "CCN", -0.2), homo("q:3", "C1CC", -0.3), homo("q:4", "CCC", -0.3)]
    examples, skipped = select_examples(rows)
    assert [row.reason for row in skipped] == ["unparsable SMILES"]
    assert skipped[0].target == PropertyTarget("homo", -0.3, "Hartree")
    records = {e.key: PredictionRecord(e.index, e.id, e.task, e.smiles, e.reference, "-0.25") for e in examples}
    refused = examples[1]
    records[refused.key] = PredictionRecord(
        refused.index, refused.id, refused.task, refused.smiles, refused.reference, None, "refused by the processor"
    )
    report, counts = score_task("property", examples, records, MetricResources([]), skipped)
    # answered: q:1 (exact) and q:4 (off by 0.05); q:2 refused and q:3 unparsable are invalid
    assert report.values() == pytest.approx(
        {"mae_homo_hartree": 0.025, "valid_ratio_homo": 50, "mae_hartree": 0.025, "valid_ratio": 50}
    )
    valid = counts["valid_answers"]
    assert (valid["rows"], valid["valid"], valid["invalid"], valid["unanswered"]) == (4, 2, 2, 2)


# ---------------------------------------------------------------- baselines


@pytest.fixture(scope="module")
def baseline_data(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("baselines")
    train = [
        qa_row("t:1", "OC(=O)c1ccccc1", "description", "A benzoic acid."),
        qa_row("t:2", "CCO", "description", "A primary alcohol."),
        homo("t:3", "CCO", -0.26),
        homo("t:4", "c1ccccc1", -0.25),
        homo("t:5", "CCO", 0.05, "LUMO"),
    ]
    test = [
        qa_row("e:1", SMILES["aspirin"], "description", "An acetylated benzoic acid."),
        qa_row("e:2", "CCCO", "description", "A primary alcohol."),
        homo("e:3", "CCCO", -0.24),
        homo("e:4", "CCCO", 0.07, "LUMO"),
    ]
    return write_jsonl(folder / "train.jsonl", train), write_jsonl(folder / "test.jsonl", test)


def predictions_by_id(output_dir: Path) -> dict[str, str | None]:
    lines = (output_dir / PREDICTIONS_FILE).read_text().splitlines()
    return {json.loads(line)["id"]: json.loads(line)["prediction"] for line in lines}


def test_retrieval_baseline_copies_the_nearest_training_answer(tmp_path, baseline_data):
    train, test = baseline_data
    config = EvaluationConfig(
        output_dir=str(tmp_path / "out"),
        data=str(test),
        baseline="retrieval",
        train_data=str(train),
        scibert_vocab=str(SCIBERT_VOCAB),
        progress=False,
    )
    results = evaluate(config)
    # nearest by Morgan/Tanimoto within the same task and property; the LUMO row is not a HOMO neighbour
    assert predictions_by_id(tmp_path / "out") == {
        "e:1": "A benzoic acid.",
        "e:2": "A primary alcohol.",
        "e:3": "-0.26",
        "e:4": "0.05",
    }
    assert metric_values(results, "property")["mae_hartree"] == pytest.approx((0.02 + 0.02) / 2)
    assert results["decoding"] is None and results["baseline"]["train_rows_used"] == 5
    unavailable = {m["name"]: m["reason"] for m in task_entry(results, "description")["unavailable_metrics"]}
    assert "no LLM tokenizer" in unavailable["bleu2_llamo_llm_tokens"]


def test_mean_baseline_predicts_the_training_mean(tmp_path, baseline_data):
    train, test = baseline_data
    rows = [json.loads(line) for line in test.read_text().splitlines()]
    test = write_jsonl(tmp_path / "test.jsonl", [*rows, homo("e:5", "C1CC", -0.3)])  # no model can read its SMILES
    config = EvaluationConfig(
        output_dir=str(tmp_path / "out"),
        data=str(test),
        baseline="mean",
        train_data=str(train),
        scibert_vocab=None,
        progress=False,
    )
    results = evaluate(config)
    predictions = predictions_by_id(tmp_path / "out")
    assert float(predictions["e:3"]) == pytest.approx(-0.255) and float(predictions["e:4"]) == pytest.approx(0.05)
    values = metric_values(results, "property")
    assert values["mae_homo_hartree"] == pytest.approx(0.015)
    assert values["mae_lumo_hartree"] == pytest.approx(0.02)
    assert values["mae_hartree"] == pytest.approx(0.0175)
    assert values["valid_ratio_lumo"] == pytest.approx(100)
    assert values["valid_ratio_homo"] == pytest.approx(50) and values["valid_ratio"] == pytest.approx(200 / 3)
    property_counts = task_entry(results, "property")["counts"]
    assert property_counts["skipped_reasons"] == {"unparsable SMILES": 1}
    assert property_counts["valid_answers"]["unanswered"] == 1
    description = task_entry(results, "description")["counts"]
    assert (description["predicted"], description["skipped"]) == (0, 2)
    assert description["skipped_reasons"] == {"the mean baseline answers property questions only": 2}


def test_namer_baseline_and_proposed_names(tmp_path, tiny_llamo, tiny_llamo_dir):
    pytest.importorskip("openclatura")
    from llamo.retrieval import rule_namer

    rows = [
        qa_row("n:1", "CCOC(=O)c1ccc(Cl)cc1", "iupac", "ethyl 4-chlorobenzoate"),
        qa_row("n:2", "CC(C)O", "iupac", "propan-2-ol"),
        qa_row("d:1", "CCO", "description", "A primary alcohol."),
    ]
    data = write_jsonl(tmp_path / "test.jsonl", rows)
    config = EvaluationConfig(
        output_dir=str(tmp_path / "namer"), data=str(data), baseline="namer", scibert_vocab=None, progress=False
    )
    results = evaluate(config)
    namer = rule_namer()
    predictions = predictions_by_id(tmp_path / "namer")
    assert predictions == {"n:1": namer(rows[0]["smiles"]), "n:2": namer(rows[1]["smiles"]), "d:1": None}
    assert results["decoding"] is None and results["model"]["evaluated"] == "baseline:namer"
    assert task_entry(results, "description")["counts"]["skipped_reasons"] == {"the namer answers naming only": 1}
    if opsin_unavailable_reason() is None:
        assert metric_values(results, "iupac")["structure_match_opsin_inchikey"] == pytest.approx(100)
    with pytest.raises(ValueError, match="propose_names needs verify_names"):
        EvaluationConfig(output_dir=str(tmp_path / "x"), data=str(data), propose_names=True)

    # the model's evaluation: a proposed name is a last candidate, answered when the checker reads it as the molecule
    model, processor = tiny_llamo
    examples, _ = select_examples(rows[1:2])
    checker = lambda names: [inchikey("CC(C)O") if name == "isopropanol" else None for name in names]  # noqa: E731
    proposer = lambda smiles: "isopropanol"  # noqa: E731
    settings = {"max_new_tokens": 3}
    assert GenerationPredictor(model, processor, settings, name_checker=checker, name_proposer=proposer)(examples) == [
        "isopropanol"
    ]
    assert GenerationPredictor(model, processor, settings, name_checker=checker)(examples) != ["isopropanol"]


def test_name_hints_reach_description_prompts_only(tmp_path, tiny_llamo, monkeypatch):
    from llamo import retrieval

    rows = [qa_row("n:1", "CC(C)O", "iupac", "propan-2-ol"), qa_row("d:1", "CC(C)O", "description", "An alcohol.")]
    examples, _ = select_examples(rows)
    model, processor = tiny_llamo
    predictor = GenerationPredictor(model, processor, {"max_new_tokens": 2}, name_hint=lambda smiles: "propan-2-ol")
    naming, describing = (predictor._messages(example) for example in examples)
    text = [block["text"] for block in describing[0]["content"] if block["type"] == "text"]
    assert text[-1].startswith("Its IUPAC name is propan-2-ol. ")
    assert naming == examples[0].chat_messages()

    data = write_jsonl(tmp_path / "test.jsonl", rows)
    config = EvaluationConfig(output_dir=str(tmp_path / "hinted"), data=str(data), name_hints=True, progress=False)
    hints = {"tasks": ["description"], "namer": "openclatura", "checker": "opsin", "max_chars": 80}
    assert config.decoding()["name_hints"] == hints
    assert "name_hints" not in config.generation_kwargs()
    monkeypatch.setattr(retrieval, "opsin_checker", lambda: None)
    with pytest.raises(ValueError, match="name_hints needs OPSIN"):
        make_predictor(config, None, model, processor)
    monkeypatch.setattr(retrieval, "opsin_checker", lambda: lambda names: [None] * len(names))
    monkeypatch.setattr(retrieval, "rule_namer", lambda **_: lambda smiles: "propan-2-ol")
    unverified = make_predictor(config, SimpleNamespace(index=None), model, processor)
    assert unverified._messages(examples[1]) == examples[1].chat_messages()  # OPSIN did not read the name back
    monkeypatch.setattr(retrieval, "opsin_checker", lambda: lambda names: [inchikey("CC(C)O")] * len(names))
    verified = make_predictor(config, SimpleNamespace(index=None), model, processor)
    assert verified._messages(examples[1]) != examples[1].chat_messages()
    monkeypatch.setattr(retrieval, "rule_namer", lambda **_: lambda smiles: "x" * 81)  # longer than NAME_HINT_MAX_CHARS
    too_long = make_predictor(config, SimpleNamespace(index=None), model, processor)
    assert too_long._messages(examples[1]) == examples[1].chat_messages()
    named: list[str] = []
    monkeypatch.setattr(retrieval, "rule_namer", lambda **_: lambda smiles: named.append(smiles) or "alkane")
    hint = retrieval.name_hinter()
    assert hint("C" * 101) is None and named == []  # too large to be named at all
    assert hint("C" * 100) == "alkane" and named == ["C" * 100]
    assert hint("C" * 100) == "alkane" and named == ["C" * 100]  # asked again (a chat's next turn): named once

    def failing(names):
        raise RuntimeError("OPSIN failed")

    assert retrieval.name_hinter(failing)("CCO") is None  # no hint rather than a failed answer


# ---------------------------------------------------------------- command line


def test_cli_evaluate_and_setup_wordnet(tmp_path, tiny_llamo_dir, eval_rows, capsys, request):
    data = write_jsonl(tmp_path / "data.jsonl", eval_rows[:3])
    empty = tmp_path / "no-wordnet"
    empty.mkdir()
    common = ["--data", str(data), "--scibert-vocab", str(SCIBERT_VOCAB), "--nltk-data", str(empty), "--no-progress"]
    out = tmp_path / "out"
    code = main(["evaluate", str(tiny_llamo_dir), *common, "--output-dir", str(out), "--max-new-tokens", "3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "bleu4_molt5_scibert" in captured.out and "unavailable" in captured.out
    assert json.loads((out / "results.json").read_text())["decoding"]["max_new_tokens"] == 3

    assert main(["evaluate", *common, "--output-dir", str(tmp_path / "other")]) == 2
    assert "No model given" in capsys.readouterr().err
    assert main(["evaluate", str(tiny_llamo_dir), *common, "--output-dir", str(out), "--max-new-tokens", "5"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["evaluate", "--baseline", "mean", *common, "--output-dir", str(tmp_path / "m")]) == 2
    assert "--train-data" in capsys.readouterr().err

    no_wordnet = ["setup-wordnet", "--nltk-data", str(tmp_path / "nltk"), "--source", str(empty), "--no-download"]
    assert main(no_wordnet) == 2
    assert "apt-get install" in capsys.readouterr().err
    if DEBIAN_WORDNET.is_dir():  # installed by the session fixture: the command finds it ready
        installed = request.getfixturevalue("nltk_data")
        assert main(["setup-wordnet", "--nltk-data", str(installed)]) == 0
        assert f"WordNet ready for METEOR in {installed}" in capsys.readouterr().out
