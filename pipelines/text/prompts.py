"""The prompts each corpus kind sends and the parsers that read the answers.

Parsers accept what chat models actually write (a preamble such as "Sure! Here's ...",
quotes, numbered or bulleted lists, **bold** markers) and raise :class:`ParseError` on
anything else (a refusal, an empty or rambling answer); the corpus builder counts those
and re-asks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ----------------------------------------------------------------------- comc-sentences
COMC_PROMPT = "Please make a brief sentence to describe a photo that contains {labels}."  # §3.1


def join_names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def comc_prompt(names: list[str]) -> str:
    return COMC_PROMPT.format(labels=join_names(names))


class ParseError(ValueError):
    """The answer does not have the shape the prompt asked for."""


_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i cannot|i can't|as an ai|i'?m unable|i am unable)\b", re.I
)
_PREAMBLE = re.compile(r"^(sure|certainly|of course|here('s| is| are)|okay|ok)\b.*[:!.]$", re.I)
_ABOUT_THE_ANSWER = re.compile(r"\b(sentences?|captions?|descriptions?)\b", re.I)


def is_preamble(line: str) -> bool:
    """A chat model's lead-in, not the answer: "Sure! Here's a brief sentence:",
    "Certainly!", "Here is a sentence describing the photo." -- but not an answer that
    happens to start like one ("Here is a dog on a sofa.")."""
    if not _PREAMBLE.match(line):
        return False
    return (
        line.endswith((":", "!")) or len(line.split()) <= 3 or bool(_ABOUT_THE_ANSWER.search(line))
    )


def parse_sentence(text: str) -> str:
    """One brief sentence out of a chat answer (CoMC's training text)."""
    if _REFUSAL.search(text):
        raise ParseError("refusal")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not is_preamble(ln)]
    if not lines:
        raise ParseError("no sentence")
    s = lines[0].strip().strip("\"'“”").strip()
    s = re.sub(r"^(sentence|caption)\s*:\s*", "", s, flags=re.I).strip("\"'“”").strip()
    n_words = len(s.split())
    if n_words < 3 or n_words > 60:
        raise ParseError(f"{n_words} words is not a brief sentence")
    return s


# ------------------------------------------------------------------- class-descriptions
DESCRIPTION_PROMPTS = {
    "attribute": (
        "What are useful visual features for distinguishing a {label} in a photo? "
        "List {n} short features, one per line."
    ),
    "subclass": (
        "List up to {n} kinds of {label} (more specific categories), one per line. "
        "If there are none, say so."
    ),
    "superclass": (
        "List up to {n} broader categories that a {label} belongs to, from the most specific "
        "to the most general, one per line."
    ),
    "scene": (
        "List {n} scenes in which a {label} typically appears in a photo, one per line, "
        "formatted as 'Scene Name - short description'."
    ),
}
_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.*\S)\s*$")
_NONE = re.compile(r"\b(there are no|no common|none\b|no (?:specific|distinct|broader))", re.I)


def parse_list(text: str) -> list[str]:
    """The items of a numbered or bulleted list; [] when the answer says there are none."""
    if _REFUSAL.search(text):
        raise ParseError("refusal")
    items = []
    for line in text.splitlines():
        m = _ITEM.match(line)
        if m:
            item = re.sub(r"\*\*(.+?)\*\*", r"\1", m.group(1)).strip().rstrip(".").strip()
            if item:
                items.append(item)
    if items:
        return items
    if _NONE.search(text):
        return []
    raise ParseError("no list items")


def a_an(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def lower_first(item: str) -> str:
    """'Orange circle' -> 'orange circle'; acronyms ('TV stand') stay."""
    return item if item[1:2].isupper() else item[:1].lower() + item[1:]


# Nouns a speaker uses without an article ("grass", "water") or with "the" ("the sky").
MASS_NOUNS = frozenset(
    {"grass", "water", "snow", "sand", "ice", "rain", "fire", "money", "clothing", "food"}
)
DEFINITE_NOUNS = frozenset({"sky", "night", "sun", "moon", "sea", "ocean"})
COLOUR_WORDS = frozenset(
    [
        "black",
        "white",
        "grey",
        "gray",
        "red",
        "orange",
        "yellow",
        "green",
        "blue",
        "purple",
        "pink",
        "brown",
        "beige",
        "gold",
        "silver",
        "dark",
        "light",
        "pale",
        "bright",
    ]
)
_NOT_PLURAL = ("ss", "us", "is", "ics")  # glass, cactus, tennis, physics


def is_plural(name: str) -> bool:
    """'objects', 'animals and nature', 'glasses': a name that takes 'are'."""
    head = name.lower().split(" and ")[0].split()[-1] if name.strip() else ""
    return " and " in name.lower() or (head.endswith("s") and not head.endswith(_NOT_PLURAL))


def singular(name: str) -> str:
    """'objects' -> 'object', 'activities' -> 'activity'; 'X and Y' and other names stay."""
    if " and " in name or not is_plural(name):
        return name
    if name.endswith("ies"):
        return name[:-3] + "y"
    if name.endswith(("ches", "shes", "sses", "xes")):
        return name[:-2]
    return name[:-1]


def noun_phrase(name: str) -> str:
    """'monkey' -> 'a monkey', 'orca' -> 'an orca', 'objects' -> 'objects', 'grass' ->
    'grass', 'sky' -> 'the sky' (acronyms keep their case)."""
    name = lower_first(name.strip())
    last = name.lower().split()[-1] if name else ""
    if is_plural(name) or name.lower() in MASS_NOUNS or last in MASS_NOUNS:
        return name
    if name.lower() in DEFINITE_NOUNS:
        return f"the {name}"
    return f"{a_an(name)} {name}"


def kind_of(parent: str, plural_subject: bool = False) -> str:
    """The hierarchy clause: 'is a kind of mammal', 'is a kind of object' (singular of a
    plural group name), 'belongs to animals and nature' (a group that has no singular)."""
    parent = lower_first(parent.strip())
    if " and " in parent:
        return f"{'belong' if plural_subject else 'belongs'} to {parent}"
    return f"{'are kinds' if plural_subject else 'is a kind'} of {singular(parent)}"


def _which(name: str) -> tuple[str, str, str]:
    """(subject phrase, 'is'/'are', 'has'/'have') for a class name."""
    plural = is_plural(name)
    return noun_phrase(name), ("are" if plural else "is"), ("have" if plural else "has")


_IS_STARTS = frozenset(
    [
        "any",
        "one",
        "one's",
        "also",
        "often",
        "usually",
        "mostly",
        "typically",
        "generally",
        "commonly",
        "sometimes",
        "small",
        "large",
        "tiny",
        "big",
        "round",
        "flat",
        "long",
        "short",
        "tall",
    ]
)
_VERB_STARTS = frozenset(
    [
        "may",
        "can",
        "might",
        "could",
        "looks",
        "look",
        "appears",
        "appear",
        "shows",
        "show",
        "carries",
        "carry",
        "lives",
        "live",
        "grows",
        "grow",
        "moves",
        "move",
    ]
)


def attribute_clause(item: str, plural_subject: bool = False) -> str:
    """'black and brown' -> 'is black and brown'; 'a long tail' / 'four legs' -> 'has ...';
    'may have several cells' -> 'may have several cells'; 'such as a dog' stays."""
    item = lower_first(item.strip().rstrip(".:;,").strip())
    words = re.findall(r"[a-z']+", item.lower())
    be, have = ("are", "have") if plural_subject else ("is", "has")
    if not words:
        return f"{have} {item}"
    if item.lower().startswith(("such as", "for example", "including")):
        return item
    if words[0] in _VERB_STARTS or words[0] in {"is", "are", "has", "have"}:
        return item
    colourish = all(w in COLOUR_WORDS or w in {"and", "or", "in", "colour", "color"} for w in words)
    if colourish or words[0] in _IS_STARTS or words[-1] in {"colour", "color", "coloured"}:
        return f"{be} {item}"
    return f"{have} {item}"


def description_sentence(label: str, kind: str, item: str) -> str:
    """RCNn's sentence shapes (../shared/data/coco/rcnn_llm_descriptions_65.json: "a X,
    which is a Y.", "a X, which has Z.", "a X, which appears together with the S ..."),
    with the articles, agreement and singular group names an LLM would write."""
    subject, _, _ = _which(label)
    plural = is_plural(label)
    if kind == "subclass":
        item = lower_first(item)
        return f"{noun_phrase(item)}, which {kind_of(label, is_plural(item))}."
    if kind == "superclass":
        return f"{subject}, which {kind_of(item, plural)}."
    if kind == "attribute":
        clause = attribute_clause(item, plural)
        sep = ", " if clause.startswith(("such as", "for example", "including")) else ", which "
        return f"{subject}{sep}{clause}."
    if kind == "scene":  # "Scene Name - short description"
        name, _, desc = (x.strip() for x in item.partition(" - "))
        name = " ".join(w if w.isupper() else w.lower() for w in name.split())
        verb = "appear" if plural else "appears"
        desc = lower_first(desc.rstrip(".")) if desc else ""
        return f"{subject}, which {verb} together with the {name}" + (f", {desc}." if desc else ".")
    raise ValueError(kind)


def chain_sentence(child: str, label: str, parent: str) -> str:
    """'a poodle, which is a kind of dog, which is a kind of mammal.'"""
    child = lower_first(child)
    return (
        f"{noun_phrase(child)}, which {kind_of(label, is_plural(child))}, "
        f"which {kind_of(parent, is_plural(label))}."
    )


# ------------------------------------------------------------------- category-relations
RELATION_TYPES = (
    "Synonymy/Similarity",
    "Is-a/Hypernym",
    "Functional Relationship",
    "Co-occurrence",
    "Part-Whole Relationship",
)
STRENGTH_SCORE = {"high": 3, "medium": 2, "low": 1}

# C2SRT supplementary B.3, verbatim up to whitespace.
RELATIONS_PROMPT = """Based on the following list of known categories, please identify all categories that have a direct relationship with the new category **{new}**. For each related category, provide the type of relationship, the association strength (**High, Medium, Low**), and an explanation.

Types of Relationships

1. **Synonymy/Similarity:** Two categories are conceptually very similar or synonymous.
2. **Is-a/Hypernym:** One category is a superordinate or subordinate concept of the other.
3. **Functional Relationship:** The function or use of one category is related to the other.
4. **Co-occurrence:** Two categories often appear in the same context or environment.
5. **Part-Whole Relationship:** One category is a component of the other.

Instructions

Please provide the information for each relevant category in the following format:

Related Category [Number]: [Category Name]

- **Type of Relationship:** [Relationship Type]
- **Association Strength:** High / Medium / Low
- **Explanation:** [Brief explanation of the relationship and the reason for the assigned strength]

Example

New Category: Nature

List of Seen Categories: natural, fauna, wildlife, flora, scenic, outdoors, cliff, blossoms, insect, wild, plant, scenery, blooms, gardens, landscapes

Example Output:

Related Category 1: natural

- **Type of Relationship:** Synonymy/Similarity
- **Association Strength:** High
- **Explanation:** "Natural" is conceptually very similar to "nature" as both refer to elements of the physical world not created by humans.

Related Category 2: fauna

- **Type of Relationship:** Is-a/Hypernym
- **Association Strength:** High
- **Explanation:** "Fauna" represents the animal life of a region, which is a fundamental part of "nature."

...

Using the format and example provided above, identify all categories from the list of known categories that have a direct relationship with the new category **{new}**. For each related category, specify:

List of Seen Categories:

{seen}

Focus on associations that would be most relevant for understanding or classifying **{new}** within this domain."""


def relations_prompt(new: str, seen: list[str]) -> str:
    return RELATIONS_PROMPT.format(new=new, seen=", ".join(seen))


def relations_prompt_fields(prompt: str) -> tuple[str, list[str]] | None:
    """(new category, seen list) of a B.3 prompt, or None if ``prompt`` is not one."""
    m = re.search(r"new category \*\*(.+?)\*\*\. For each", prompt)
    s = re.search(r"List of Seen Categories:\n\n(.*?)\n\nFocus on", prompt, re.S)
    if not m or not s:
        return None
    return m.group(1), [x.strip() for x in s.group(1).split(", ") if x.strip()]


@dataclass(frozen=True)
class Relation:
    category: str
    relation: str
    strength: str  # High / Medium / Low
    score: int  # 3 / 2 / 1


_BLOCK = re.compile(r"Related Category\s*\d*\s*:\s*(.+)", re.I)
_TYPE = re.compile(r"Type of Relationship:?\**:?\s*(.+)", re.I)
_STRENGTH = re.compile(r"Association Strength:?\**:?\s*\**\s*(High|Medium|Low)\b", re.I)


def parse_relations(text: str) -> list[Relation]:
    """The related categories of a B.3 answer; [] when the answer says there are none.

    A block without an association strength is an error, except the last one: an answer
    cut at the token limit ends mid-block, and the complete blocks before it stand."""
    if _REFUSAL.search(text):
        raise ParseError("refusal")
    blocks = re.split(r"(?=Related Category\s*\d*\s*:)", text, flags=re.I)
    heads = [i for i, b in enumerate(blocks) if _BLOCK.match(b.strip())]
    out: list[Relation] = []
    for i, block in enumerate(blocks):
        head = _BLOCK.match(block.strip())
        if not head:
            continue
        name = re.sub(r"[*\"“”]", "", head.group(1)).strip().rstrip(".").strip()
        strength = _STRENGTH.search(block)
        if (not name or not strength) and i == heads[-1] and out:
            break  # truncated final block
        if not name or not strength:
            raise ParseError(f"related category {name!r} has no association strength")
        kind = _TYPE.search(block)
        rel = re.sub(r"\*", "", kind.group(1)).strip() if kind else "unspecified"
        s = strength.group(1).capitalize()
        out.append(Relation(name, rel, s, STRENGTH_SCORE[s.lower()]))
    if not out and not _NONE.search(text):
        raise ParseError("no 'Related Category' blocks")
    return out
