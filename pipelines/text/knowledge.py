"""What the offline text provider knows about a label set.

Source, in order:
1. the dataset's own knowledge (the shared contract of generated datasets):
   ``<data>/<dataset>/knowledge.json`` + ``cooccurrence.npz`` (toyworld, iconworld);
2. WordNet 3.0 (pipelines/text/wordnet.py) for real label sets: glosses give attributes,
   hypernyms the hierarchy, lemma names keywords; co-occurrence comes from the train
   labels' statistics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.io import load_npz, read_json

FIELDS = (
    "parents",
    "group",
    "subgroup",
    "keywords",
    "synset",
    "gloss",
    "hypernyms",
    "attributes",
    "scenes",
)


@dataclass
class LabelKnowledge:
    parents: list[str] = field(default_factory=list)
    group: str | None = None
    subgroup: str | None = None
    keywords: list[str] = field(default_factory=list)
    synset: str | None = None
    gloss: str | None = None
    hypernyms: list[str] = field(default_factory=list)
    attributes: list[str] = field(default_factory=list)
    scenes: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)  # derived: labels/hyponyms below


@dataclass
class Knowledge:
    names: list[str]  # label-space order (seen first)
    labels: dict[str, LabelKnowledge]
    cooccurrence: np.ndarray  # (C, C) float64 counts; diagonal = label frequency
    source: str

    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def cond(self) -> np.ndarray:
        """P(column label | row label) from the co-occurrence counts (0 where unknown)."""
        diag = np.diag(self.cooccurrence).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = self.cooccurrence / diag[:, None]
        p[~np.isfinite(p)] = 0.0
        np.fill_diagonal(p, 0.0)
        return p


def _from_json(path: Path, names: list[str]) -> dict[str, LabelKnowledge]:
    raw = read_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("labels"), dict):
        raise ValueError(f"{path}: expected {{'labels': {{name: {{...}}}}, 'source': str}}")
    out: dict[str, LabelKnowledge] = {}
    missing = [n for n in names if n not in raw["labels"]]
    if missing:
        raise ValueError(
            f"{path}: no entry for {len(missing)} label(s) of the label space, e.g. "
            f"{missing[:3]}; regenerate the dataset"
        )
    for n in names:
        entry = raw["labels"][n]
        unknown = set(entry) - set(FIELDS)
        if unknown:
            raise ValueError(f"{path}: labels.{n}: unknown keys {sorted(unknown)}")
        out[n] = LabelKnowledge(
            **{k: entry.get(k) or ([] if k in _LISTS else None) for k in FIELDS}
        )
    return out


_LISTS = {"parents", "keywords", "hypernyms", "attributes", "scenes"}


def _cooc_from_npz(path: Path, names: list[str]) -> np.ndarray:
    data = load_npz(path)
    if "labels" not in data or "counts" not in data:
        raise ValueError(f"{path}: needs arrays 'labels' and 'counts'")
    pos = {str(n): i for i, n in enumerate(data["labels"])}
    missing = [n for n in names if n not in pos]
    if missing:
        raise ValueError(f"{path}: labels {missing[:3]} are missing from 'labels'")
    idx = np.array([pos[n] for n in names])
    return data["counts"][np.ix_(idx, idx)].astype(np.float64)


def cooccurrence_from_labels(labels: np.ndarray) -> np.ndarray:
    """(C, C) counts of labels positive together in one image (train-label statistics)."""
    pos = (np.asarray(labels) == 1).astype(np.float64)
    return pos.T @ pos


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _gloss_attributes(gloss: str) -> list[str]:
    """Descriptive pieces of a WordNet gloss ("large long-necked ruminant; having ...")."""
    parts = re.split(r";|, | with | that | having ", gloss)
    out = [p.strip(" .") for p in parts if len(p.strip()) > 3]
    return [p for p in out if len(p.split()) <= 8][:6]


def from_wordnet(names: list[str]) -> tuple[dict[str, LabelKnowledge], int]:
    """Knowledge of real label names from WordNet; returns it and how many names have no
    synset (those keep only their name)."""
    from pipelines.text.wordnet import lookup, open_wordnet

    wn = open_wordnet()
    out: dict[str, LabelKnowledge] = {}
    nameset = set(names)
    unknown = 0
    for n in names:
        syn = lookup(wn, n)
        if syn is None:
            unknown += 1
            out[n] = LabelKnowledge()
            continue
        path = syn.hypernym_paths()[0][::-1][1:]  # nearest hypernym first
        hyper = [s.lemma_names()[0].replace("_", " ") for s in path]
        lemmas = [x.replace("_", " ") for x in syn.lemma_names() if x.replace("_", " ") != n]
        hypo = [h.lemma_names()[0].replace("_", " ") for h in syn.hyponyms()][:12]
        parts = [m.lemma_names()[0].replace("_", " ") for m in syn.part_meronyms()][:4]
        gloss = syn.definition()
        out[n] = LabelKnowledge(
            parents=[h for h in hyper if h in nameset and h != n],
            group=syn.lexname().split(".")[-1],
            subgroup=hyper[0] if hyper else None,
            keywords=lemmas[:5],
            synset=syn.name(),
            gloss=gloss,
            hypernyms=hyper[:6],
            attributes=[*_gloss_attributes(gloss), *(f"a visible {p}" for p in parts)],
            scenes=[],
            children=hypo,
        )
    return out, unknown


def load_knowledge(data_dir: Path, names: list[str], train_labels: np.ndarray | None) -> Knowledge:
    """The dataset's knowledge (generated datasets) or WordNet's (real label sets)."""
    data_dir = Path(data_dir)
    kpath, cpath = data_dir / "knowledge.json", data_dir / "cooccurrence.npz"
    if kpath.exists():
        labels = _from_json(kpath, names)
        source = str(read_json(kpath).get("source", "knowledge.json"))
    else:
        labels, _ = from_wordnet(names)
        source = "wordnet-3.0"
    if cpath.exists():
        cooc = _cooc_from_npz(cpath, names)
    elif train_labels is not None:
        cooc = cooccurrence_from_labels(train_labels)
        source += " + train-label co-occurrence"
    else:
        cooc = np.zeros((len(names), len(names)))
    _derive(labels, names, cooc)
    return Knowledge(names, labels, cooc, source)


def _derive(labels: dict[str, LabelKnowledge], names: list[str], cooc: np.ndarray) -> None:
    """Fill what the sources leave implicit: children from parents, and scenes (the labels
    a class is seen with most often) where none are given."""
    for n in names:
        for p in labels[n].parents:
            if p in labels and n not in labels[p].children:
                labels[p].children.append(n)
    diag = np.diag(cooc)
    for i, n in enumerate(names):
        if labels[n].scenes or diag[i] <= 0:
            continue
        partners = np.argsort(-cooc[i], kind="stable")
        labels[n].scenes = [names[j] for j in partners if j != i and cooc[i, j] > 0][:5]
