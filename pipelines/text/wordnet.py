"""WordNet 3.0 for the offline text provider on real label sets, read by nltk from the
files Debian's ``wordnet-base`` (+ ``wordnet-sense-index``) install in /usr/share/wordnet.

nltk expects an nltk_data layout and a ``lexnames`` file Debian does not ship, so the
reader is opened on a private copy (copies + the 45 lexicographer file names, which
are fixed in WordNet 3.0) under ``~/.cache/ovml/nltk_data/corpora/wordnet``. ``$OVML_WORDNET_DIR``
points at another WordNet 3.0 dict folder.
"""

from __future__ import annotations

import os
import shutil
from functools import lru_cache
from pathlib import Path

DEBIAN_DIR = Path("/usr/share/wordnet")
NEEDED = ("data.noun", "index.noun", "noun.exc", "data.adj", "index.adj", "index.sense")
# WordNet 3.0's lexicographer files, in file-number order (lexnames(5WN)).
LEXNAMES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


class WordNetUnavailable(RuntimeError):
    """WordNet files are not installed; the message says how to install them."""


def wordnet_dir() -> Path:
    return Path(os.environ.get("OVML_WORDNET_DIR", str(DEBIAN_DIR)))


def _reader_root(src: Path) -> Path:
    """A folder nltk accepts: symlinks to ``src``'s files plus ``lexnames``."""
    data = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ovml" / "nltk_data"
    root = data / "corpora" / "wordnet"  # nltk's layout: it maps synsets via "corpora/wordnet"
    root.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        dst = root / f.name
        if f.is_file() and not dst.exists():  # nltk refuses symlinks and hard links (36 MB)
            tmp = dst.with_suffix(f".tmp{os.getpid()}")
            shutil.copyfile(f, tmp)
            os.replace(tmp, dst)
    lex = root / "lexnames"
    if not lex.exists():
        lines = [
            f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}" for i, name in enumerate(LEXNAMES)
        ]
        tmp = lex.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, lex)
    return root


@lru_cache(maxsize=2)
def _open(src: str):
    import warnings

    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = _reader_root(Path(src))
    data = str(root.parent.parent)
    if data not in nltk.data.path:
        nltk.data.path.append(data)  # nltk only reads corpora under its data paths
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available"
        return WordNetCorpusReader(str(root), None)


def open_wordnet(src: Path | None = None):
    """An nltk WordNet reader on ``src`` (default :func:`wordnet_dir`), or
    :class:`WordNetUnavailable` with the fix in one line."""
    src = wordnet_dir() if src is None else Path(src)
    missing = [f for f in NEEDED if not (src / f).exists()]
    if missing:
        raise WordNetUnavailable(
            f"WordNet 3.0 not found in {src} (missing {', '.join(missing)}): install it with "
            "`apt-get install wordnet-base wordnet-sense-index`, or set OVML_WORDNET_DIR to a "
            "WordNet 3.0 dict folder; the offline text provider needs it for label sets "
            "without knowledge.json"
        )
    return _open(str(src))


def lookup(wn, name: str):
    """The first noun synset of a label name (tries the name, its underscore form and
    its last word, the head noun of a compound such as "traffic light"), or None."""
    cands = [name, name.replace(" ", "_"), name.lower().replace(" ", "_")]
    if " " in name:
        cands.append(name.split()[-1])
    for cand in cands:
        found = wn.synsets(cand, pos="n")
        if found:
            return found[0]
    return None
