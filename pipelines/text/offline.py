"""The offline provider: a deterministic stand-in for a chat LLM.

It reads the prompt text (so it answers through any transport, e.g. the OpenAI-compatible
stub server of the tests), recognises the prompt types of pipelines/text/prompts.py and
answers from :class:`~pipelines.text.knowledge.Knowledge` in the shapes chat models use:
preambles, quotes, numbered lists, the B.3 relation blocks. A small fraction of answers
are refusals, so the re-ask path of every parser runs. Randomness is a pure function of
(messages, temperature, seed): the same request always gets the same answer.
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np

from pipelines.text import prompts as P
from pipelines.text.knowledge import Knowledge

REFUSAL_RATE = 0.02
MODIFIER_GROUPS = {"colour", "color", "pattern", "size", "attribute", "adjective"}
_PREAMBLES = (
    "",
    "",
    "",
    "Sure! Here's a brief sentence:\n\n",
    "Here is a sentence describing the photo:\n",
    "Certainly!\n\n",
)
_SENTENCES = (
    "A photo of {p}{s}.",
    "This image shows {p}{s}.",
    "{P} can be seen in this picture{s}.",
    "The picture features {p}{s}.",
    "A snapshot capturing {p}{s}.",
    "Here we see {p}{s}, all in one frame.",
    "In this photo, {p} appear together{s}.",
    "A simple scene with {p}{s}.",
)
_REFUSALS = (
    "I'm sorry, but I can't help with that request.",
    "As an AI language model, I cannot see photos.",
)


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


class OfflineLLM:
    """Answers chat requests from a label set's knowledge."""

    def __init__(self, knowledge: Knowledge):
        self.k = knowledge
        self._by_lower = {n.lower(): n for n in knowledge.names}
        alts = sorted(self._by_lower, key=len, reverse=True)
        self._names_re = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, alts)) + r")(?![\w-])")
        self._cond = knowledge.cond()
        # lift of s given c against s's rate with an average label (N-free: the counts
        # file does not say how many scenes there were)
        c = self._cond
        mean = (c.sum(axis=0) / max(1, len(c) - 1))[None, :]
        self._lift = np.where(mean > 0, c / np.maximum(mean, 1e-12), 0.0)
        self._index = knowledge.index()

    # ------------------------------------------------------------------ entry
    def answer(self, messages: list[dict[str, str]], temperature: float, seed: int | None) -> str:
        prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        key = json.dumps([messages, temperature, seed], sort_keys=True).encode()
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
        if temperature > 0 and rng.random() < REFUSAL_RATE:
            return str(rng.choice(_REFUSALS))
        if (fields := P.relations_prompt_fields(prompt)) is not None:
            return self.relations(*fields, rng)
        m = re.match(
            r"Please make a brief sentence to describe a photo that contains (.+)\.$", prompt
        )
        if m:
            return self.sentence(self.names_in(m.group(1)), rng)
        for kind, template in P.DESCRIPTION_PROMPTS.items():
            pattern = (
                re.escape(template)
                .replace(r"\{label\}", "(?P<label>.+?)")
                .replace(r"\{n\}", r"(?P<n>\d+)")
            )
            m = re.fullmatch(pattern, prompt)
            if m:
                return self.describe(kind, m.group("label"), int(m.group("n")), rng)
        return "I'm sorry, I don't understand the request."

    def names_in(self, text: str) -> list[str]:
        return [self._by_lower[m.lower()] for m in self._names_re.findall(text.lower())]

    # -------------------------------------------------------------- sentences
    def sentence(self, names: list[str], rng: np.random.Generator) -> str:
        group = {n: (self.k.labels[n].group or "").lower() for n in names}
        settings = [n for n in names if group[n] == "scene"]
        mods = [n for n in names if group[n] in MODIFIER_GROUPS]
        things = [n for n in names if n not in settings and n not in mods]
        if not things and not mods:
            things, settings = settings[:1], settings[1:]
        order = list(rng.permutation(len(things)))
        phrases = [f"{article(things[i])} {things[i]}" for i in order]
        if mods and phrases:  # "a small striped fish": attributes qualify a thing
            first = things[order[0]]
            adj = " ".join(mods)
            phrases[0] = f"{article(adj)} {adj} {first}"
        elif mods:
            phrases = [f"something {P.join_names(mods)}"]
        p = P.join_names(phrases)
        s = "".join(f" {rng.choice(('in the', 'on the', 'with the'))} {x}" for x in settings)
        template = str(rng.choice(_SENTENCES))
        text = template.format(p=p, P=p[0].upper() + p[1:], s=s)
        if rng.random() < 0.3:
            text = f'"{text}"'
        return str(rng.choice(_PREAMBLES)) + text

    # ----------------------------------------------------------- descriptions
    def describe(self, kind: str, label: str, n: int, rng: np.random.Generator) -> str:
        lk = self.k.labels.get(label)
        if lk is None:
            return f"I'm sorry, I don't know what a {label} is."
        if kind == "attribute":
            items = list(lk.attributes) or (
                [f"the typical look of {article(lk.hypernyms[0])} {lk.hypernyms[0]}"]
                if lk.hypernyms
                else [f"the usual appearance of {article(label)} {label}"]
            )
            head = f"Here are some visual features that help identify {article(label)} {label}:"
        elif kind == "subclass":
            items = list(lk.children)
            if not items:
                return f"There are no common subcategories of {label}; it is already a specific category."
            head = f"Here are some kinds of {label}:"
        elif kind == "superclass":
            items = list(dict.fromkeys([*lk.parents, *lk.hypernyms]))
            if not items:
                return f"{label.capitalize()} is a very general category; there are no broader categories to list."
            head = f"{article(label).capitalize()} {label} belongs to these broader categories:"
        else:  # scene
            items = [self._scene_item(label, s) for s in lk.scenes]
            if not items:
                items = [
                    f"Everyday Scene - a typical setting where {article(label)} {label} is seen"
                ]
            head = f"Typical scenes for {article(label)} {label}:"
        if kind != "superclass" and len(items) > n:
            items = [items[i] for i in sorted(rng.choice(len(items), n, replace=False))]
        items = items[:n]
        bullet = "{i}. {x}" if rng.random() < 0.7 else "- {x}"
        body = "\n".join(
            bullet.format(i=i + 1, x=x[0].upper() + x[1:]) for i, x in enumerate(items)
        )
        return f"{head}\n\n{body}"

    def _scene_item(self, label: str, scene: str) -> str:
        sk = self.k.labels.get(scene)
        detail = (
            ", ".join(sk.attributes[:2]) if sk and sk.attributes else (sk.gloss if sk else None)
        )
        detail = detail or f"where {article(label)} {label} is often seen"
        return f"{scene.title()} - {detail}"

    # --------------------------------------------------------------- relations
    def relations(self, new: str, seen: list[str], rng: np.random.Generator) -> str:
        rels = self.related(new, seen)
        if not rels:
            return f"There are no categories in the list with a direct relationship to {new}."
        keep = [r for r in rels if rng.random() > 0.15]  # answers vary between queries
        out = []
        for i, (name, kind, strength, why) in enumerate(keep[:15]):
            if rng.random() < 0.15:
                strength = int(np.clip(strength + rng.choice((-1, 1)), 1, 3))
            level = {3: "High", 2: "Medium", 1: "Low"}[strength]
            out.append(
                f"Related Category {i + 1}: {name}\n\n"
                f"- **Type of Relationship:** {kind}\n"
                f"- **Association Strength:** {level}\n"
                f"- **Explanation:** {why}"
            )
        if not out:
            return f"There are no categories in the list with a direct relationship to {new}."
        return "\n\n".join(out)

    def related(self, new: str, seen: list[str]) -> list[tuple[str, str, int, str]]:
        """(seen category, relation type, strength 1-3, explanation), strongest first."""
        k = self.k.labels.get(new)
        if k is None:
            return []
        i = self._index.get(new)
        found: dict[str, tuple[str, int, str]] = {}

        def put(s: str, kind: str, strength: int, why: str) -> None:
            if s not in found or found[s][1] < strength:
                found[s] = (kind, strength, why)

        words = set(new.lower().split())
        for s in seen:
            if s == new or s not in self.k.labels:
                continue
            o = self.k.labels[s]
            if s in k.keywords or new in o.keywords:
                put(s, "Synonymy/Similarity", 3, f'"{s}" is another name for "{new}".')
            if s in k.parents or new in o.parents:
                put(s, "Is-a/Hypernym", 3, f'One of "{s}" and "{new}" is a kind of the other.')
            elif s in k.hypernyms or new in o.hypernyms:
                put(s, "Is-a/Hypernym", 2, f'"{s}" and "{new}" share a line of broader categories.')
            if len(s.split()) + len(new.split()) > 2 and (
                set(s.lower().split()) < words or words < set(s.lower().split())
            ):
                put(s, "Part-Whole Relationship", 2, f'"{s}" is part of what makes "{new}".')
            if k.subgroup and k.subgroup == o.subgroup:
                put(
                    s,
                    "Synonymy/Similarity",
                    1,
                    f'"{s}" and "{new}" are similar {k.subgroup} categories.',
                )
            j = self._index.get(s)
            if i is not None and j is not None:  # lift: "often together", not "frequent"
                p, lift = self._cond[i, j], self._lift[i, j]
                level = 3 if lift >= 3 else 2 if lift >= 2 else 1 if lift >= 1.5 else 0
                level = level if p >= 0.1 else 0
                if level:
                    put(s, "Co-occurrence", level, f'"{s}" often appears together with "{new}".')
        order = sorted(found, key=lambda s: (-found[s][1], seen.index(s)))
        return [(s, *found[s]) for s in order]
