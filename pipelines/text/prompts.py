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


def parse_sentence(text: str) -> str:
    """One brief sentence out of a chat answer (CoMC's training text)."""
    if _REFUSAL.search(text):
        raise ParseError("refusal")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not _PREAMBLE.match(ln)]
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


def description_sentence(label: str, kind: str, item: str) -> str:
    """RCNn's sentence shapes (see ../shared/data/coco/rcnn_llm_descriptions_65.json)."""
    if kind != "scene":
        item = lower_first(item)
    if kind == "subclass":
        return f"{a_an(item)} {item}, which is {a_an(label)} {label}."
    if kind == "superclass":
        return f"{a_an(label)} {label}, which is {a_an(item)} {item}."
    if kind == "attribute":  # "which is round" / "which has four legs"
        verb = "is" if len(item.split()) == 1 else "has"
        return f"{a_an(label)} {label}, which {verb} {item}."
    if kind == "scene":
        return f"{a_an(label)} {label}, which appears together with the {item}."
    raise ValueError(kind)


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
    """The related categories of a B.3 answer; [] when the answer says there are none."""
    if _REFUSAL.search(text):
        raise ParseError("refusal")
    blocks = re.split(r"(?=Related Category\s*\d*\s*:)", text, flags=re.I)
    out: list[Relation] = []
    for block in blocks:
        head = _BLOCK.match(block.strip())
        if not head:
            continue
        name = re.sub(r"[*\"“”]", "", head.group(1)).strip().rstrip(".").strip()
        strength = _STRENGTH.search(block)
        if not name or not strength:
            raise ParseError(f"related category {name!r} has no association strength")
        kind = _TYPE.search(block)
        rel = re.sub(r"\*", "", kind.group(1)).strip() if kind else "unspecified"
        s = strength.group(1).capitalize()
        out.append(Relation(name, rel, s, STRENGTH_SCORE[s.lower()]))
    if not out and not _NONE.search(text):
        raise ParseError("no 'Related Category' blocks")
    return out
