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
from collections import Counter

import numpy as np

import pipelines.text.prompts as P
from pipelines.text.knowledge import Knowledge

VERSION = 2  # part of the response-cache key: a changed answer is asked for again
REFUSAL_RATE = 0.02
# the top of WordNet's noun hierarchy: no LLM lists these as "broader categories"
TOO_GENERAL = frozenset(
    {
        "entity",
        "physical entity",
        "abstraction",
        "abstract entity",
        "whole",
        "object",
        "instrumentality",
        "causal agent",
        "matter",
        "thing",
        "unit",
        "group",
        "relation",
    }
)
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
        self._given_scenes = {s for lk in knowledge.labels.values() for s in lk.scenes}

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
        np_label = P.noun_phrase(label)
        if kind == "attribute":
            items = self._features(label)
            head = f"Here are some visual features that help identify {np_label}:"
        elif kind == "subclass":
            items = list(lk.children)
            if not items:
                return f"There are no common subcategories of {label}; it is already a specific category."
            head = f"Here are some kinds of {label}:"
        elif kind == "superclass":
            items = self._broader(label, n)
            if not items:
                return f"{label.capitalize()} is a very general category; there are no broader categories to list."
            head = f"{np_label[0].upper() + np_label[1:]} belongs to these broader categories:"
        else:  # scene
            items = self._scenes(label, n)
            if not items:
                items = [f"Everyday Scene - where {np_label} is usually seen"]
            head = f"Typical scenes for {np_label}:"
        if kind != "superclass" and len(items) > n:
            items = [items[i] for i in sorted(rng.choice(len(items), n, replace=False))]
        items = items[:n]
        bullet = "{i}. {x}" if rng.random() < 0.7 else "- {x}"
        body = "\n".join(
            bullet.format(i=i + 1, x=x[0].upper() + x[1:]) for i, x in enumerate(items)
        )
        return f"{head}\n\n{body}"

    # What the answers are made of: an LLM's world knowledge, here the dataset's knowledge.
    def _ancestors(self, label: str) -> set[str]:
        out, todo = set(), list(self.k.labels[label].parents)
        while todo:
            p = todo.pop()
            if p not in out and p in self.k.labels:
                out.add(p)
                todo.extend(self.k.labels[p].parents)
        return out

    def _descendants(self, label: str) -> set[str]:
        out, todo = set(), list(self.k.labels[label].children)
        while todo:
            c = todo.pop()
            if c not in out and c in self.k.labels:
                out.add(c)
                todo.extend(self.k.labels[c].children)
        return out

    def _is_setting(self, name: str) -> bool:
        """A background / place label (toyworld: group 'scene'; iconworld: the labels that
        are nobody's parent or child and sit in other labels' scene lists)."""
        lk = self.k.labels.get(name)
        if lk is None:
            return False
        if (lk.group or "").lower() == "scene":
            return True
        return not lk.parents and not lk.children and name in self._given_scenes

    def _partners(self, label: str, k: int) -> list[str]:
        """Objects seen with ``label`` more often than with an average label (lift), not
        in its own hierarchy, not a setting, not a coarse group; strongest first."""
        i = self._index.get(label)
        if i is None:
            return []
        skip = {label} | self._ancestors(label) | self._descendants(label)
        cand = [
            j
            for j in np.argsort(-self._lift[i], kind="stable")
            if self._lift[i, j] > 1.0
            and self._cond[i, j] >= 0.02
            and self.k.names[j] not in skip
            and not self._is_setting(self.k.names[j])
            and not self.k.labels[self.k.names[j]].children
            and (self.k.labels[self.k.names[j]].group or "").lower() not in MODIFIER_GROUPS
        ]
        return [self.k.names[j] for j in cand[:k]]

    def _features(self, label: str) -> list[str]:
        """Visual features: colours ("black and brown"), the definition, other names, and
        for a coarse class its members' colours and examples."""
        lk = self.k.labels[label]
        plural = P.is_plural(label)
        colours = [a for a in lk.attributes if a.lower() in P.COLOUR_WORDS]
        others = [a for a in lk.attributes if a.lower() not in P.COLOUR_WORDS]
        items: list[str] = []
        if colours:
            items.append(P.join_names(colours[:2]))
            if len(colours) > 2:
                items.append(f"sometimes {colours[2]} as well")
        items += others
        if lk.gloss:
            gloss = re.sub(r"\s*\([^)]*\)", "", lk.gloss).strip()
            first, *rest = [g.strip() for g in gloss.split(";") if g.strip()]
            be = "are" if plural else "is"
            items.append(first if first.split()[0] in ("is", "are") else f"{be} {first}")
            items += [r for r in rest[:1] if len(r.split()) <= 14]
        synonyms = [w for w in lk.keywords if " " in w and w.lower() != label.lower()]
        items += [f"also called {P.noun_phrase(w)}" for w in synonyms[:2]]
        members = [c for c in lk.children if c in self.k.labels]
        if members:
            pooled = Counter(
                a
                for c in sorted(self._descendants(label))
                for a in self.k.labels[c].attributes
                if a.lower() in P.COLOUR_WORDS
            )
            if pooled:
                top = [c for c, _ in pooled.most_common(3)]
                items.append(
                    "often " + ", ".join(top[:-1]) + " or " + top[-1]
                    if len(top) > 1
                    else f"often {top[0]}"
                )
            examples = [P.noun_phrase(c) for c in members[:3]]
            items.append(
                "such as "
                + (
                    ", ".join(examples[:-1]) + " or " + examples[-1]
                    if len(examples) > 1
                    else examples[0]
                )
            )
        if not items:
            partners = self._partners(label, 2)
            items = (
                [f"often seen with {P.join_names([P.noun_phrase(x) for x in partners])}"]
                if partners
                else [f"what {P.noun_phrase(label)} usually looks like"]
            )
        return items

    def _broader(self, label: str, n: int) -> list[str]:
        """Broader categories, most specific first: the label-space parents in the order
        of the WordNet hypernym path (subgroups before groups), then the remaining
        hypernyms, without the top of WordNet ("entity", "whole")."""
        lk = self.k.labels[label]
        depth = {p: len(self._ancestors(p)) if p in self.k.labels else 0 for p in lk.parents}
        rank = {h: i for i, h in enumerate(lk.hypernyms)}
        parents = sorted(lk.parents, key=lambda p: (-depth[p], rank.get(p, len(rank))))
        path = [h for h in lk.hypernyms if h not in TOO_GENERAL]
        merged = [m for m in dict.fromkeys([*parents, *path]) if m != label]
        return merged[: max(n, len(lk.parents))]

    def _scenes(self, label: str, n: int) -> list[str]:
        """'Grass - often next to a dog and a banana': the settings the class is seen in
        (its preferred ones, else the most frequent by co-occurrence) and the objects it
        co-occurs with (lift)."""
        lk = self.k.labels[label]
        related = self._ancestors(label) | self._descendants(label)
        settings = [s for s in lk.scenes if self._is_setting(s) and s != label]
        i = self._index.get(label)
        if not settings and i is not None:
            order = np.argsort(-self.k.cooccurrence[i], kind="stable")
            settings = [
                self.k.names[j]
                for j in order
                if self.k.cooccurrence[i, j] > 0
                and self._is_setting(self.k.names[j])
                and self.k.names[j] != label
            ][:3]
        objects = [
            s
            for s in lk.scenes
            if s in self.k.labels
            and not self._is_setting(s)
            and not self.k.labels[s].children
            and s not in related
            and s != label
        ]
        partners = list(dict.fromkeys([*objects, *self._partners(label, 2 * max(1, n))]))
        if self._is_setting(label):  # a place: what is seen there
            return [f"{p.title()} - often seen there" for p in partners[:n]]
        be = "are" if P.is_plural(label) else "is"
        items = []
        for k, s in enumerate(settings[:n]):
            near = partners[2 * k : 2 * k + 2]
            desc = (
                f"often next to {P.join_names([P.noun_phrase(x) for x in near])}"
                if near
                else f"where {P.noun_phrase(label)} {be} often seen"
            )
            items.append(f"{s.title()} - {desc}")
        if not items and partners:
            items = [f"{p.title()} - seen close to {P.noun_phrase(label)}" for p in partners[:n]]
        return items

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
