"""toyworld: deterministic, labels agree with the scene, train hides unseen labels."""

from __future__ import annotations

import numpy as np

from pipelines.data import toyworld as tw
from pipelines.data.prepared import PreparedDataset


def test_generation_is_deterministic_and_contract_holds(tmp_path):
    opts = tw.ToyworldOptions(n_pretrain=20, n_train=30, n_test=25, seed=3)
    a = tw.generate(opts, tmp_path / "a", progress=False)
    b = tw.generate(opts, tmp_path / "b", progress=False)
    for split in ("pretrain", "train", "test"):
        assert np.array_equal(
            tw.load_images(tmp_path / "a", split), tw.load_images(tmp_path / "b", split)
        )
    assert tw.load_captions(tmp_path / "a") == tw.load_captions(tmp_path / "b")
    loaded = PreparedDataset.load(tmp_path / "a")
    S = a.label_space.n_seen
    train, test = loaded.splits["train"].labels, loaded.splits["test"].labels
    assert train.dtype == np.int8 and test.dtype == np.int8
    assert (train[:, S:] == 0).all(), "train split must not annotate unseen labels"
    assert set(np.unique(train[:, :S])) <= {-1, 1} and set(np.unique(test)) <= {-1, 1}
    assert (test[:, S:] == 1).any()
    assert loaded.label_space.names() == b.label_space.names()
    other = tw.generate(opts.model_copy(update={"seed": 4}), tmp_path / "c", progress=False)
    assert not np.array_equal(other.splits["test"].labels, a.splits["test"].labels)


def test_labels_follow_the_scene():
    rng = np.random.default_rng(0)
    opts = tw.ToyworldOptions()
    for _ in range(50):
        sc = tw.sample_scene(rng, opts)
        labels = tw.labels_of(sc)
        assert sc.scene in labels
        for o in sc.objects:
            assert {o.shape, o.colour, f"{o.colour} {o.shape}", tw.SHAPES[o.shape]} <= labels
        assert labels <= set(tw.vocabulary())


def test_label_space_split_is_disjoint_and_composition_aware():
    space = tw.label_space()
    seen = {lab.name for lab in space.seen}
    unseen = {lab.name for lab in space.unseen}
    assert not seen & unseen
    assert seen | unseen == set(tw.vocabulary())
    assert {
        "hexagon",
        "purple hexagon",
        "red hexagon",
        "purple",
        "purple fish",
        "red star",
    } <= unseen
    assert {"fish", "red", "red fish", "star"} <= seen


def test_captions_are_true_and_varied():
    """A caption never names a shape, colour or scene the image lacks; captions come in
    full and partial forms, and together they name every object."""
    rng = np.random.default_rng(1)
    opts = tw.ToyworldOptions()
    forms = {"full": 0, "partial": 0}
    for _ in range(300):
        sc = tw.sample_scene(rng, opts)
        text = tw.caption(sc, rng)
        words = set(text.replace(",", " ").split())
        shapes = {o.shape for o in sc.objects} | {
            s for o in sc.objects for s in tw.SYNONYMS.get(o.shape, ())
        }
        assert words & set(tw.SHAPES) <= shapes, text
        assert words & set(tw.COLOURS) <= {o.colour for o in sc.objects}, text
        assert words & set(tw.SCENES) <= {sc.scene}, text
        named = sum(
            o.shape in words or bool(set(tw.SYNONYMS.get(o.shape, ())) & words) for o in sc.objects
        )
        forms["full" if named == len(sc.objects) and sc.scene in text else "partial"] += 1
    assert forms["full"] > 60 and forms["partial"] > 60


def test_unknown_unseen_word_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="not in the vocabulary"):
        tw.label_space(tw.ToyworldOptions(unseen_words=("unicorn",)))


def test_ontology_is_data():
    onto = tw.ontology()
    assert onto["parents"]["fish"] == ["animal"]
    assert "water" in onto["co_occurring_scenes"]["fish"]
    assert "sea" in onto["synonyms"]["water"]
