"""WordNet for NLTK's METEOR, read from `<nltk_data>/corpora/wordnet/`: NLTK's own package when its data server
answers, else the database files of the Debian packages `wordnet-base` and `wordnet-sense-index` (offline) plus the
`lexnames` file (the numbered lexicographer files) that they leave out."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import shutil
import socket
import threading
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

DEBIAN_WORDNET = Path("/usr/share/wordnet")
APT_INSTALL = "apt-get install -y wordnet-base wordnet-sense-index"
DOWNLOAD_TIMEOUT = 5.0
"""Seconds to wait for NLTK's data server to accept a connection before falling back to the Debian files."""

logger = logging.getLogger(__name__)

_DATABASE = (
    "cntlist.rev index.sense index.adj index.adv index.noun index.verb data.adj data.adv data.noun data.verb adj.exc "
    "adv.exc noun.exc verb.exc"
)
WORDNET_FILES = tuple(_DATABASE.split())
"""The WordNet 3.0 database files NLTK's reader opens (besides `lexnames`)."""

_LEXICOGRAPHER = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object "
    "noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl"
)
LEXICOGRAPHER_FILES = tuple(_LEXICOGRAPHER.split())
"""The 45 lexicographer files of WordNet 3.0, in file-number order (lexnames(5WN))."""

_SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_READERS: dict[str, Any] = {}


class WordNetUnavailable(RuntimeError):
    """WordNet cannot be read; the message says why and how to install it."""


def load_wordnet(nltk_data: str | Path | None = None):
    """NLTK's WordNet reader, from `nltk_data/corpora/wordnet` or, without `nltk_data`, from NLTK's data path; raises
    `WordNetUnavailable` (saying how to install it) when WordNet is missing or unreadable."""
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError as error:
        raise WordNetUnavailable("METEOR needs NLTK: pip install nltk") from error

    setup_hint = f"run `llamo setup-wordnet{f' --nltk-data {nltk_data}' if nltk_data else ''}` (after {APT_INSTALL})"
    folder = None if nltk_data is None else str(Path(nltk_data).resolve())
    if folder is not None and folder not in [str(entry) for entry in nltk.data.path]:
        nltk.data.path.append(folder)  # NLTK reads only folders on its data path
    try:
        root = nltk.data.find("corpora/wordnet", paths=None if folder is None else [folder])
    except LookupError as error:
        where = "for NLTK" if folder is None else f"in {Path(nltk_data) / 'corpora' / 'wordnet'}"
        raise WordNetUnavailable(f"WordNet is not installed {where}: {setup_hint}.") from error
    if (key := str(getattr(root, "path", root))) not in _READERS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "multilingual functions are not available": METEOR needs none
                reader = WordNetCorpusReader(root, None)
            reader.synsets("acid")
        except (OSError, ValueError, AssertionError, LookupError) as error:
            raise WordNetUnavailable(f"WordNet in {key} cannot be read ({error}): {setup_hint}.") from error
        _READERS[key] = reader
    return _READERS[key]


def _server_answers(url: str, timeout: float) -> bool:
    """Whether `url`'s host accepts a TCP connection within `timeout` seconds, name lookup included (in a thread:
    `socket.create_connection`'s timeout does not bound the lookup, which an offline resolver can stall)."""
    parsed = urllib.parse.urlparse(url)
    address = (parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80))
    answered = threading.Event()

    def probe() -> None:
        with contextlib.suppress(OSError):
            socket.create_connection(address, timeout=timeout).close()
            answered.set()

    threading.Thread(target=probe, name="llamo-wordnet-probe", daemon=True).start()
    return answered.wait(timeout)


def download_wordnet(nltk_data: str | Path, timeout: float = DOWNLOAD_TIMEOUT) -> Path | None:
    """WordNet from NLTK's data server (`nltk.download("wordnet")`, unpacked) into `nltk_data/corpora/wordnet`, that
    folder returned; None when the server does not answer within `timeout` seconds or the download fails (logged)."""
    import nltk
    from nltk.downloader import Downloader

    if not _server_answers(Downloader.DEFAULT_URL, timeout):
        logger.info("NLTK's data server did not answer within %g s: WordNet is not downloaded.", timeout)
        return None
    options = {"extract": True} if "extract" in inspect.signature(nltk.download).parameters else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NLTK warns about download folders other users can write to
            done = nltk.download("wordnet", download_dir=str(nltk_data), quiet=True, raise_on_error=True, **options)
    except (ValueError, OSError) as error:
        logger.warning("NLTK's WordNet download failed (%s); using the Debian files instead.", error)
        return None
    target = Path(nltk_data) / "corpora" / "wordnet"
    return target if done and target.is_dir() else None


def setup_wordnet(
    nltk_data: str | Path | None = None,
    source: str | Path = DEBIAN_WORDNET,
    overwrite: bool = False,
    download: bool = True,
    timeout: float = DOWNLOAD_TIMEOUT,
) -> Path:
    """Install WordNet 3.0 for NLTK into `nltk_data/corpora/wordnet` (default: the first `NLTK_DATA` folder, else
    `~/nltk_data`) and return that folder: NLTK's download first (`download`, giving up after `timeout` seconds without
    an answer), else a copy of the Debian WordNet files in `source` with the `lexnames` file they lack. Does nothing
    when a readable WordNet is already there. Raises `FileNotFoundError` when nothing was downloaded and `source` lacks
    database files, `FileExistsError` when the target holds something unreadable and `overwrite` is False."""
    nltk_data = Path(nltk_data or os.environ.get("NLTK_DATA", "").split(os.pathsep)[0] or "~/nltk_data").expanduser()
    source, target = Path(source), nltk_data / "corpora" / "wordnet"
    if target.exists() and any(target.iterdir()):
        try:
            load_wordnet(nltk_data)
            return target
        except WordNetUnavailable as error:
            if not overwrite:
                raise FileExistsError(
                    f"{target} exists but is not a readable WordNet ({error}); move it away or pass --overwrite."
                ) from error
        shutil.rmtree(target)
    if download and download_wordnet(nltk_data, timeout) is not None:
        with contextlib.suppress(WordNetUnavailable):
            load_wordnet(nltk_data)
            return target
    if missing := [name for name in WORDNET_FILES if not (source / name).is_file()]:
        raise FileNotFoundError(
            f"{source} lacks the WordNet files {', '.join(missing)}; install them with: {APT_INSTALL}"
        )
    target.mkdir(parents=True, exist_ok=True)
    for name in WORDNET_FILES:
        shutil.copyfile(source / name, target / name)
    lexnames = [
        f"{i:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXICOGRAPHER_FILES)
    ]
    (target / "lexnames").write_text("".join(lexnames), encoding="utf-8")
    _READERS.pop(str(target.resolve()), None)
    load_wordnet(nltk_data)
    return target
