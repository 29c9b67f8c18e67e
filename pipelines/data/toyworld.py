"""toyworld: a procedural multi-label image world with captions, for CPU-only runs.

Images show one to three objects (a shape with a colour, a pattern and a size) on a
scene background. Labels mix granularities the way NUS-WIDE's do: objects ("fish"),
attributes ("red", "striped", "small"), scenes ("water"), super-classes ("animal",
"warm") and compositions ("red fish"). Objects prefer certain scenes (fish on water,
birds in the sky), so labels co-occur as in real data. Captions describe each image
in varied sentences and are what the tiny CLIP is pre-trained on; the multi-label
train split is annotated with seen labels only; the test split with seen + unseen.

Everything is a pure function of the options and the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from pipelines.data.prepared import Label, LabelSpace, PreparedDataset, Split
from pipelines.io import atomic_path, save_npz, write_json

# ----------------------------------------------------------------------------- ontology
SHAPES: dict[str, str] = {  # shape -> super-class
    "circle": "round shape",
    "ring": "round shape",
    "square": "polygon",
    "triangle": "polygon",
    "star": "polygon",
    "hexagon": "polygon",
    "cross": "polygon",
    "fish": "animal",
    "bird": "animal",
    "snake": "animal",
    "tree": "plant",
    "flower": "plant",
    "house": "building",
}
COLOURS: dict[str, tuple[tuple[int, int, int], str | None]] = {  # rgb, super-class
    "red": ((220, 30, 30), "warm"),
    "orange": ((245, 140, 20), "warm"),
    "yellow": ((240, 220, 30), "warm"),
    "pink": ((245, 120, 190), "warm"),
    "green": ((30, 170, 50), "cool"),
    "blue": ((30, 70, 230), "cool"),
    "purple": ((140, 40, 190), "cool"),
    "brown": ((120, 70, 30), None),
}
PATTERNS = ("plain", "striped", "dotted")
SIZES = ("small", "large")
SCENES: dict[str, tuple[int, int, int]] = {
    "sky": (150, 200, 245),
    "grass": (95, 160, 70),
    "water": (40, 110, 170),
    "sand": (225, 200, 140),
    "night": (20, 25, 60),
    "snow": (235, 240, 245),
}
SCENE_PREFERENCE: dict[str, tuple[str, ...]] = {  # co-occurrence prior
    "fish": ("water",),
    "bird": ("sky",),
    "snake": ("sand", "grass"),
    "tree": ("grass", "snow"),
    "flower": ("grass",),
    "house": ("grass", "snow", "sand"),
}
SYNONYMS: dict[str, tuple[str, ...]] = {
    "water": ("sea", "lake"),
    "sky": ("clouds",),
    "night": ("dark night", "starry night"),
    "snow": ("snowy ground",),
    "sand": ("beach", "desert"),
    "grass": ("lawn", "meadow"),
    "square": ("box",),
    "house": ("hut",),
    "large": ("big",),
    "small": ("tiny",),
    "striped": ("with stripes",),
    "dotted": ("spotted",),
}
SUPERCLASS_OF_SUPER: dict[str, str] = {"animal": "living thing", "plant": "living thing"}

# Held-out (unseen) labels: objects, an attribute, a scene, a super-class, and every
# composition that contains an unseen word, plus a few compositions of seen words.
DEFAULT_UNSEEN_WORDS = ("hexagon", "bird", "flower", "purple", "snow", "dotted", "plant")
DEFAULT_UNSEEN_COMPOSITIONS = (
    "red star",
    "blue fish",
    "green house",
    "yellow circle",
    "orange snake",
)


class ToyworldOptions(BaseModel):
    """Sizes and knobs of the generated world (params.yaml: datasets.toyworld.options)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(64, ge=32, le=256)
    n_pretrain: int = Field(8000, ge=10)
    n_train: int = Field(2000, ge=10)
    n_test: int = Field(1000, ge=10)
    max_objects: int = Field(3, ge=1, le=5)
    captions_per_image: int = Field(3, ge=1)
    seed: int = 0
    unseen_words: tuple[str, ...] = DEFAULT_UNSEEN_WORDS
    unseen_compositions: tuple[str, ...] = DEFAULT_UNSEEN_COMPOSITIONS


@dataclass(frozen=True)
class ToyObject:
    shape: str
    colour: str
    pattern: str
    size: str
    cx: float
    cy: float
    radius: float
    angle: float


@dataclass(frozen=True)
class ToyScene:
    scene: str
    objects: tuple[ToyObject, ...]


# ------------------------------------------------------------------------ label space
def vocabulary() -> list[str]:
    """All label names of toyworld, in a fixed order."""
    supers = sorted({*SHAPES.values(), *(c for _, c in COLOURS.values() if c)})
    combos = [f"{c} {s}" for s in SHAPES for c in COLOURS]
    return [*SHAPES, *COLOURS, *PATTERNS[1:], *SIZES, *SCENES, *supers, *combos]


def label_space(options: ToyworldOptions | None = None) -> LabelSpace:
    options = options or ToyworldOptions()
    vocab = vocabulary()
    unknown = [w for w in (*options.unseen_words, *options.unseen_compositions) if w not in vocab]
    if unknown:
        raise ValueError(f"toyworld options: unseen labels not in the vocabulary: {unknown}")
    unseen_words = set(options.unseen_words)

    def is_unseen(name: str) -> bool:
        return (
            name in unseen_words
            or name in options.unseen_compositions
            or (" " in name and any(part in unseen_words for part in name.split(" ")))
        )

    seen = [Label(n, n) for n in vocab if not is_unseen(n)]
    unseen = [Label(n, n) for n in vocab if is_unseen(n)]
    return LabelSpace(seen=seen, unseen=unseen)


def labels_of(scene: ToyScene) -> set[str]:
    """The positive labels of a scene (every granularity)."""
    out = {scene.scene}
    for o in scene.objects:
        out |= {o.shape, o.colour, o.size, SHAPES[o.shape], f"{o.colour} {o.shape}"}
        if o.pattern != "plain":
            out.add(o.pattern)
        if COLOURS[o.colour][1]:
            out.add(COLOURS[o.colour][1])
    return out


def ontology() -> dict:
    """The label ontology as data, for offline text sources (parents, synonyms, scenes)."""
    parents: dict[str, list[str]] = {}
    for shape, sup in SHAPES.items():
        parents[shape] = [sup]
    for colour, (_, sup) in COLOURS.items():
        parents[colour] = [sup, "colour"] if sup else ["colour"]
    for sup, top in SUPERCLASS_OF_SUPER.items():
        parents[sup] = [top]
    for p in PATTERNS[1:]:
        parents[p] = ["pattern"]
    for s in SIZES:
        parents[s] = ["size"]
    for s in SCENES:
        parents[s] = ["scene"]
    for c in COLOURS:
        for s in SHAPES:
            parents[f"{c} {s}"] = [s, c]
    return {
        "parents": parents,
        "synonyms": {k: list(v) for k, v in SYNONYMS.items()},
        "co_occurring_scenes": {k: list(v) for k, v in SCENE_PREFERENCE.items()},
    }


# --------------------------------------------------------------------------- knowledge
SHAPE_ATTRIBUTES: dict[str, tuple[str, ...]] = {  # what the shape looks like, for text sources
    "circle": ("round", "a smooth curved outline", "no corners"),
    "ring": ("round", "a hole in the middle", "a thick circular band"),
    "square": ("four equal sides", "four right-angled corners", "flat edges"),
    "triangle": ("three sides", "three pointed corners", "a flat base"),
    "star": ("five pointed arms", "sharp tips", "a narrow waist between the arms"),
    "hexagon": ("six equal sides", "six blunt corners", "a honeycomb outline"),
    "cross": ("two crossing bars", "four arms of equal length", "a plus-sign outline"),
    "fish": ("an oval body", "a forked tail fin", "a streamlined outline"),
    "bird": ("two spread wings", "a small round body", "a V-shaped silhouette"),
    "snake": ("a long wavy body", "no legs", "a small round head"),
    "tree": ("a pointed green crown", "a straight trunk", "a tall triangular outline"),
    "flower": ("five round petals", "a hollow centre", "a symmetric bloom"),
    "house": ("a pointed roof", "rectangular walls", "a roofline like an upside-down V"),
}
SCENE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "sky": ("light blue", "white clouds", "open and bright"),
    "grass": ("green", "short blades of grass", "a natural ground"),
    "water": ("deep blue", "small ripples and waves", "a wet surface"),
    "sand": ("pale yellow", "grainy speckles", "dry ground"),
    "night": ("dark blue", "scattered stars", "a pale moon"),
    "snow": ("white", "cold", "small grey speckles"),
}
GROUPS = {"shape": tuple(SHAPES), "colour": tuple(COLOURS), "pattern": PATTERNS[1:]}


def knowledge(options: ToyworldOptions | None = None) -> dict:
    """The world's knowledge as the dataset-knowledge contract (``knowledge.json``): for
    every label its parents in the label space, group, keywords, gloss, hypernyms,
    visual attributes and the scenes it appears in. Text sources (the offline LLM of
    pipelines/text) answer from it; nothing here is read by the image side."""
    space = label_space(options)
    onto = ontology()
    names = set(space.names())
    out: dict[str, dict] = {}

    def entry(name: str, **kw) -> None:
        base = {
            "parents": [p for p in onto["parents"].get(name, []) if p in names],
            "group": None,
            "subgroup": None,
            "keywords": list(SYNONYMS.get(name, ())),
            "synset": None,
            "gloss": None,
            "hypernyms": [],
            "attributes": [],
            "scenes": [],
        }
        base.update(kw)
        out[name] = base

    def chain(name: str) -> list[str]:
        ups: list[str] = []
        while name in SHAPES or name in SUPERCLASS_OF_SUPER:
            name = SHAPES.get(name) or SUPERCLASS_OF_SUPER[name]
            ups.append(name)
        return ups

    for shape, sup in SHAPES.items():
        entry(
            shape,
            group="shape",
            subgroup=sup,
            gloss=f"a {sup} drawn as a flat {shape} figure",
            hypernyms=[*chain(shape), "shape"],
            attributes=list(SHAPE_ATTRIBUTES[shape]),
            scenes=list(SCENE_PREFERENCE.get(shape, SCENES)),
        )
    for colour, (_, tone) in COLOURS.items():
        entry(
            colour,
            group="colour",
            subgroup=tone,
            gloss=f"the colour {colour}" + (f", a {tone} colour" if tone else ""),
            hypernyms=[*([tone] if tone else []), "colour"],
            attributes=[f"{colour} paint", f"a {colour} surface"],
            scenes=list(SCENES),
        )
    for pattern in PATTERNS[1:]:
        entry(
            pattern,
            group="pattern",
            gloss=f"marked with {'stripes' if pattern == 'striped' else 'dots'}",
            hypernyms=["pattern"],
            attributes=["parallel bands"] if pattern == "striped" else ["small round spots"],
            scenes=list(SCENES),
        )
    for size in SIZES:
        entry(
            size,
            group="size",
            gloss=f"{size} in size",
            hypernyms=["size"],
            attributes=["fills much of the picture"] if size == "large" else ["a small figure"],
            scenes=list(SCENES),
        )
    for scene in SCENES:
        entry(
            scene,
            group="scene",
            gloss=f"a background of {scene}",
            hypernyms=["scene", "background"],
            attributes=list(SCENE_ATTRIBUTES[scene]),
            scenes=[scene],
        )
    for sup in sorted({*SHAPES.values(), *(t for _, t in COLOURS.values() if t)}):
        members = [s for s, p in SHAPES.items() if p == sup] + [
            c for c, (_, t) in COLOURS.items() if t == sup
        ]
        is_tone = sup in ("warm", "cool")
        entry(
            sup,
            parents=[],
            group="colour" if is_tone else "shape",
            subgroup=None,
            gloss=f"a {'colour' if is_tone else 'kind of shape'} such as {_join(members)}",
            hypernyms=[*chain(sup), "colour" if is_tone else "shape"],
            attributes=[f"like a {m}" for m in members[:3]],
            scenes=sorted({sc for m in members for sc in SCENE_PREFERENCE.get(m, ())})
            or list(SCENES),
        )
    for colour in COLOURS:
        for shape in SHAPES:
            entry(
                f"{colour} {shape}",
                group="composition",
                subgroup=shape,
                gloss=f"a {shape} coloured {colour}",
                hypernyms=[shape, *chain(shape)],
                attributes=[f"{colour} in colour", *SHAPE_ATTRIBUTES[shape][:2]],
                scenes=list(SCENE_PREFERENCE.get(shape, SCENES)),
            )
    missing = names - set(out)
    if missing:  # pragma: no cover - every vocabulary word has an entry above
        raise AssertionError(f"toyworld knowledge lacks {sorted(missing)}")
    return {"labels": {n: out[n] for n in space.names()}, "source": "toyworld generator"}


def cooccurrence(options: ToyworldOptions, n_scenes: int = 20000) -> dict[str, np.ndarray]:
    """How often two labels are positive in one generated scene (``cooccurrence.npz``):
    the generator's statistics over ``n_scenes`` scenes from their own seed stream (not
    the train or test images), unseen labels included; the diagonal counts each label."""
    space = label_space(options)
    rng = np.random.default_rng(np.random.SeedSequence(options.seed).spawn(4)[3])
    index = {name: j for j, name in enumerate(space.names())}
    hits = np.zeros((n_scenes, len(index)), dtype=np.int32)
    for i in range(n_scenes):
        for name in labels_of(sample_scene(rng, options)):
            hits[i, index[name]] = 1
    return {
        "labels": np.asarray(space.names(), dtype=str),
        "counts": (hits.T @ hits).astype(np.int32),
    }


# ---------------------------------------------------------------------------- sampling
def sample_scene(rng: np.random.Generator, options: ToyworldOptions) -> ToyScene:
    n = int(rng.integers(1, options.max_objects + 1))
    shapes = list(SHAPES)
    objects: list[ToyObject] = []
    chosen = rng.choice(len(shapes), size=n, replace=False)
    size = options.image_size
    for idx in chosen:
        shape = shapes[int(idx)]
        colour = str(rng.choice(list(COLOURS)))
        pattern = str(rng.choice(PATTERNS, p=(0.5, 0.25, 0.25)))
        big = rng.random() < 0.45
        radius = size * (rng.uniform(0.2, 0.27) if big else rng.uniform(0.11, 0.15))
        # place without heavy overlap (a few tries, then accept)
        for _ in range(20):
            cx, cy = rng.uniform(radius, size - radius, size=2)
            if all(math.hypot(cx - o.cx, cy - o.cy) > 0.8 * (radius + o.radius) for o in objects):
                break
        objects.append(
            ToyObject(
                shape,
                colour,
                pattern,
                "large" if big else "small",
                float(cx),
                float(cy),
                float(radius),
                float(rng.uniform(0, 2 * math.pi)),
            )
        )
    preferred = [s for o in objects for s in SCENE_PREFERENCE.get(o.shape, ())]
    if preferred and rng.random() < 0.7:
        scene = str(rng.choice(preferred))
    else:
        scene = str(rng.choice(list(SCENES)))
    return ToyScene(scene, tuple(objects))


# ----------------------------------------------------------------------------- drawing
def _polygon(cx: float, cy: float, r: float, n: int, angle: float, inner: float | None = None):
    pts = []
    steps = n * 2 if inner else n
    for k in range(steps):
        rad = r if (inner is None or k % 2 == 0) else r * inner
        a = angle + 2 * math.pi * k / steps
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _draw_shape_mask(draw: ImageDraw.ImageDraw, o: ToyObject) -> None:
    cx, cy, r, a = o.cx, o.cy, o.radius, o.angle
    fill = 255
    if o.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif o.shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        draw.ellipse([cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55], fill=0)
    elif o.shape == "square":
        draw.polygon(_polygon(cx, cy, r * 1.1, 4, a % (math.pi / 2) + math.pi / 4), fill=fill)
    elif o.shape == "triangle":
        draw.polygon(_polygon(cx, cy, r * 1.1, 3, -math.pi / 2 + (a % 0.6) - 0.3), fill=fill)
    elif o.shape == "star":
        draw.polygon(_polygon(cx, cy, r * 1.15, 5, a, inner=0.45), fill=fill)
    elif o.shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, a % (math.pi / 3)), fill=fill)
    elif o.shape == "cross":
        w = r * 0.35
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    elif o.shape == "fish":
        d = 1 if math.cos(a) >= 0 else -1
        draw.ellipse([cx - r * 0.8, cy - r * 0.45, cx + r * 0.6, cy + r * 0.45], fill=fill)
        tail_x = cx - d * r * 0.7
        draw.polygon(
            [
                (tail_x, cy),
                (tail_x - d * r * 0.45, cy - r * 0.45),
                (tail_x - d * r * 0.45, cy + r * 0.45),
            ],
            fill=fill,
        )
    elif o.shape == "bird":
        lw = max(2, int(r * 0.3))
        draw.line(
            [(cx - r, cy - r * 0.5), (cx, cy + r * 0.15), (cx + r, cy - r * 0.5)],
            fill=fill,
            width=lw,
        )
        draw.ellipse([cx - r * 0.3, cy - r * 0.2, cx + r * 0.3, cy + r * 0.35], fill=fill)
    elif o.shape == "snake":
        lw = max(2, int(r * 0.3))
        pts = [
            (cx - r + 2 * r * t / 12, cy + r * 0.45 * math.sin(t / 12 * 2.5 * math.pi + a))
            for t in range(13)
        ]
        draw.line(pts, fill=fill, width=lw, joint="curve")
        draw.ellipse(
            [pts[-1][0] - lw, pts[-1][1] - lw, pts[-1][0] + lw, pts[-1][1] + lw], fill=fill
        )
    elif o.shape == "tree":
        draw.polygon(
            [(cx, cy - r), (cx - r * 0.75, cy + r * 0.4), (cx + r * 0.75, cy + r * 0.4)], fill=fill
        )
        draw.rectangle([cx - r * 0.18, cy + r * 0.4, cx + r * 0.18, cy + r], fill=fill)
    elif o.shape == "flower":
        pr = r * 0.38
        for k in range(5):
            ang = a + 2 * math.pi * k / 5
            px, py = cx + r * 0.55 * math.cos(ang), cy + r * 0.55 * math.sin(ang)
            draw.ellipse([px - pr, py - pr, px + pr, py + pr], fill=fill)
        draw.ellipse([cx - pr * 0.7, cy - pr * 0.7, cx + pr * 0.7, cy + pr * 0.7], fill=0)
    elif o.shape == "house":
        draw.rectangle([cx - r * 0.7, cy - r * 0.1, cx + r * 0.7, cy + r * 0.9], fill=fill)
        draw.polygon(
            [(cx - r * 0.95, cy - r * 0.1), (cx, cy - r), (cx + r * 0.95, cy - r * 0.1)], fill=fill
        )
    else:  # pragma: no cover - guarded by SHAPES
        raise ValueError(f"unknown shape {o.shape}")


def _background(scene: str, size: int, rng: np.random.Generator) -> Image.Image:
    base = np.array(SCENES[scene], dtype=np.float32)
    yy = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(base, (size, size, 3)).copy()
    img += (yy - 0.5) * 30  # vertical gradient
    img += rng.normal(0, 6, size=(size, size, 1)).astype(np.float32)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    if scene == "sky":
        for _ in range(3):
            x, y = rng.uniform(0, size, 2)
            w = rng.uniform(6, 14)
            draw.ellipse([x - w, y - w / 2, x + w, y + w / 2], fill=(250, 250, 250))
    elif scene == "grass":
        for _ in range(40):
            x, y = rng.uniform(0, size, 2)
            draw.line([(x, y), (x + rng.uniform(-2, 2), y - rng.uniform(3, 6))], fill=(40, 110, 30))
    elif scene == "water":
        for k in range(6):
            y = (k + rng.uniform(0, 1)) * size / 6
            draw.arc([0, y - 3, size / 2, y + 3], 0, 180, fill=(150, 200, 240))
            draw.arc([size / 2, y - 3, size, y + 3], 0, 180, fill=(150, 200, 240))
    elif scene == "sand":
        for _ in range(60):
            x, y = rng.uniform(0, size, 2)
            draw.point((x, y), fill=(170, 140, 90))
    elif scene == "night":
        for _ in range(15):
            x, y = rng.uniform(0, size, 2)
            draw.point((x, y), fill=(255, 255, 200))
        x, y = rng.uniform(0.1 * size, 0.9 * size, 2)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(240, 240, 200))
    elif scene == "snow":
        for _ in range(30):
            x, y = rng.uniform(0, size, 2)
            draw.point((x, y), fill=(190, 200, 215))
    return pil


def _pattern_fill(o: ToyObject, size: int) -> Image.Image:
    rgb = np.array(COLOURS[o.colour][0], dtype=np.float32)
    fill = np.broadcast_to(rgb, (size, size, 3)).copy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if o.pattern == "striped":
        u = (xx * math.cos(o.angle) + yy * math.sin(o.angle)) / max(3.0, o.radius / 3)
        fill[(np.floor(u) % 2) == 0] = rgb * 0.35 + 255 * 0.65 * (rgb.mean() < 128)
    elif o.pattern == "dotted":
        step = max(4.0, o.radius / 2.5)
        dx, dy = (xx % step) - step / 2, (yy % step) - step / 2
        dark = rgb.mean() < 128
        fill[(dx**2 + dy**2) < (step * 0.28) ** 2] = (230, 230, 230) if dark else (25, 25, 25)
    return Image.fromarray(fill.astype(np.uint8))


def render(scene: ToyScene, size: int, seed: int) -> np.ndarray:
    """Draw a scene as an (size, size, 3) uint8 image."""
    rng = np.random.default_rng(seed)
    img = _background(scene.scene, size, rng)
    for o in scene.objects:
        mask = Image.new("L", (size, size), 0)
        _draw_shape_mask(ImageDraw.Draw(mask), o)
        img.paste(_pattern_fill(o, size), (0, 0), mask)
    return np.asarray(img, dtype=np.uint8)


# ---------------------------------------------------------------------------- captions
_OPENERS = ("a photo of", "a picture of", "an image showing", "there is", "we see", "")
_SCENE_PHRASES = {
    "sky": ("in the sky", "against the sky"),
    "grass": ("on the grass", "on grass"),
    "water": ("in the water", "on water"),
    "sand": ("on the sand", "on sand"),
    "night": ("at night", "in the night"),
    "snow": ("in the snow", "on snow"),
}


def _object_phrase(o: ToyObject, rng: np.random.Generator) -> str:
    words = []
    if rng.random() < 0.5:
        words.append(o.size if rng.random() < 0.8 else SYNONYMS[o.size][0])
    if rng.random() < 0.9:
        words.append(o.colour)
    if o.pattern != "plain" and rng.random() < 0.7:
        words.append(o.pattern)
    noun = o.shape if rng.random() < 0.9 else SYNONYMS.get(o.shape, (o.shape,))[0]
    phrase = " ".join([*words, noun])
    if rng.random() < 0.15:
        sup = SHAPES[o.shape]
        phrase = f"{phrase}, {'an' if sup[0] in 'aeiou' else 'a'} {sup}"
    warm_cool = COLOURS[o.colour][1]
    if warm_cool and rng.random() < 0.1:
        phrase = f"{phrase} in a {warm_cool} colour"
    article = "an" if phrase[0] in "aeiou" else "a"
    return f"{article} {phrase}"


def caption(scene: ToyScene, rng: np.random.Generator) -> str:
    """One of many varied sentences describing a scene, like web alt-text.

    Half the captions describe the whole scene; the rest are partial (one object, the
    objects' shapes, or the scene alone). Partial captions matter: with full captions
    only, scene and colour already tell the images of a batch apart, so the contrastive
    loss never has to learn shapes; a caption such as "a photo of a star" can only be
    matched to its image by the shape.
    """
    objs = list(rng.permutation(np.array(scene.objects, dtype=object)))
    r = rng.random()
    if r < 0.2:  # one object, some of its attributes
        return f"{rng.choice(_OPENERS)} {_object_phrase(objs[0], rng)}".strip()
    if r < 0.35:  # the shapes only
        nouns = [f"{'an' if o.shape[0] in 'aeiou' else 'a'} {o.shape}" for o in objs]
        return f"{rng.choice(_OPENERS)} {_join(nouns)}".strip()
    if r < 0.45:  # the scene only
        word = (
            scene.scene
            if rng.random() < 0.8
            else str(rng.choice(SYNONYMS.get(scene.scene, (scene.scene,))))
        )
        return (
            f"{rng.choice(('a photo of the', 'a picture of the', 'the', 'a view of the'))} {word}"
        )
    body = _join([_object_phrase(o, rng) for o in objs])
    if r < 0.5:
        scene_txt = f"{rng.choice(SYNONYMS.get(scene.scene, (scene.scene,)))}"
        return f"{rng.choice(_OPENERS)} {scene_txt} with {body}".strip()
    if r < 0.6:
        return f"a {scene.scene} scene with {body}"
    opener = str(rng.choice(_OPENERS))
    return f"{opener} {body} {rng.choice(_SCENE_PHRASES[scene.scene])}".strip()


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# ----------------------------------------------------------------------------- builder
def _label_matrix(
    scenes: list[ToyScene], space: LabelSpace, *, annotate_unseen: bool
) -> np.ndarray:
    index = {lab.name: j for j, lab in enumerate(space.all)}
    labels = np.full((len(scenes), len(index)), -1, dtype=np.int8)
    for i, sc in enumerate(scenes):
        for name in labels_of(sc):
            labels[i, index[name]] = 1
    if not annotate_unseen:
        labels[:, space.n_seen :] = 0
    return labels


def generate(options: ToyworldOptions, out_dir: Path, *, progress: bool = True) -> PreparedDataset:
    """Generate toyworld into ``out_dir`` (atomically) and return it.

    Layout: the prepared-dataset contract (labels.json, train.npz, test.npz, meta.json)
    plus images_<split>.npy (uint8, N x H x W x 3), captions.json for the ``pretrain``
    split, ontology.json, and the dataset-knowledge contract that text sources read:
    knowledge.json (:func:`knowledge`) and cooccurrence.npz (:func:`cooccurrence`).
    """
    space = label_space(options)
    sizes = {"pretrain": options.n_pretrain, "train": options.n_train, "test": options.n_test}
    root_rng = np.random.SeedSequence(options.seed)
    split_seeds = dict(zip(sizes, root_rng.spawn(len(sizes)), strict=True))
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        splits: dict[str, Split] = {}
        captions: list[list[str]] = []
        for split, n in sizes.items():
            rng = np.random.default_rng(split_seeds[split])
            scenes = [sample_scene(rng, options) for _ in range(n)]
            images = np.empty((n, options.image_size, options.image_size, 3), dtype=np.uint8)
            draw_seeds = rng.integers(0, 2**31, size=n)
            for i, sc in enumerate(
                tqdm(scenes, desc=f"toyworld {split}", disable=not progress, leave=False)
            ):
                images[i] = render(sc, options.image_size, int(draw_seeds[i]))
            np.save(tmp / f"images_{split}.npy", images)
            ids = np.array([f"{split}_{i:06d}" for i in range(n)])
            if split == "pretrain":
                captions = [
                    [caption(sc, rng) for _ in range(options.captions_per_image)] for sc in scenes
                ]
                save_npz(
                    tmp / "pretrain.npz",
                    image_ids=ids,
                    labels=_label_matrix(scenes, space, annotate_unseen=True),
                )
            else:
                splits[split] = Split(
                    ids, _label_matrix(scenes, space, annotate_unseen=split == "test")
                )
        write_json(tmp / "captions.json", captions)
        write_json(tmp / "ontology.json", ontology())
        write_json(tmp / "knowledge.json", knowledge(options))
        save_npz(tmp / "cooccurrence.npz", **cooccurrence(options))
        ds = PreparedDataset(
            "toyworld",
            space,
            splits,
            meta={"options": options.model_dump(mode="json"), "image_source": "npy"},
        )
        ds.save(tmp / "_prepared")
        for f in (tmp / "_prepared").iterdir():
            f.rename(tmp / f.name)
        (tmp / "_prepared").rmdir()
    return ds


def load_images(root: Path, split: str, *, mmap: bool = True) -> np.ndarray:
    return np.load(Path(root) / f"images_{split}.npy", mmap_mode="r" if mmap else None)


def load_captions(root: Path) -> list[list[str]]:
    import json

    return json.loads((Path(root) / "captions.json").read_text(encoding="utf-8"))
