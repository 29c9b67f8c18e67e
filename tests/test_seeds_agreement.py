"""Seeds (one cell per training seed, tables print mean ± std) and `ovml agreement`."""

from __future__ import annotations

import copy

import pytest

from pipelines.agreement import agreement_rows, render_agreement
from pipelines.config import ConfigError, load_params, seeded, split_seed
from pipelines.graph import build_graph
from pipelines.io import write_json
from pipelines.tables import table_rows, to_markdown
from tests.conftest import TINY_PARAMS, write_params


def test_seeded_names_round_trip():
    assert seeded("qks", 2) == "qks@s2" and split_seed("qks@s2") == ("qks", 2)
    assert split_seed("qks") == ("qks", None)
    assert split_seed("epsilon-m2") == ("epsilon-m2", None)


def _params(tmp_path, **extra):
    raw = copy.deepcopy(TINY_PARAMS)
    raw["tables"]["seeded"] = {
        "title": "seeded",
        "datasets": ["toyworld"],
        "rows": ["random", "clip_zeroshot"],
        "seeds": [0, 1, 2],
    }
    raw.update(extra)
    return load_params(write_params(tmp_path, raw))


def test_a_seeded_table_makes_one_cell_per_seed_and_keeps_single_cells(tmp_path):
    p = _params(tmp_path)
    cells = p.cells
    assert ("toyworld", "random") in cells  # the unseeded table keeps <variant>/
    for s in (0, 1, 2):
        assert ("toyworld", f"random@s{s}") in cells
    g = build_graph(p)
    st = g["cell@toyworld@random@s1"]
    assert st.out.endswith("cells/toyworld/random@s1")
    assert "seed" not in st.params and "variants.random" in st.params  # its own seed
    assert "seed" in g["cell@toyworld@random"].params
    assert {f"cell@toyworld@random@s{s}" for s in (0, 1, 2)} <= set(g["table@seeded"].deps)
    assert p.seed_for("random@s2") == 2 and p.seed_for("random") == p.seed
    assert p.backbone_for("toyworld", "clip_zeroshot@s1") == "toy-clip"


def test_bad_seeds_and_reserved_names_are_errors(tmp_path):
    raw = copy.deepcopy(TINY_PARAMS)
    raw["tables"]["tiny"]["seeds"] = [1, 1]
    with pytest.raises(ConfigError, match="tables.tiny.seeds"):
        load_params(write_params(tmp_path / "a", raw))
    raw = copy.deepcopy(TINY_PARAMS)
    raw["variants"]["random@s1"] = {"method": "random"}
    with pytest.raises(ConfigError, match="reserved for seeds"):
        load_params(write_params(tmp_path / "b", raw))


def _fake_cell(p, variant: str, zsl: dict, gzsl: dict | None = None) -> None:
    folder = p.path("results") / "cells" / "toyworld" / variant
    meta = {"counts": {"zsl": {"images": 10}, "gzsl": {"images": 10}}}
    write_json(folder / "metrics.json", {"zsl": zsl, "gzsl": gzsl or zsl, "meta": meta})


def test_seeded_table_prints_mean_and_std(tmp_path):
    p = _params(tmp_path)
    for s, v in zip((0, 1, 2), (10.0, 12.0, 14.0), strict=True):
        _fake_cell(p, f"random@s{s}", {"mAP": v})
        _fake_cell(p, f"clip_zeroshot@s{s}", {"mAP": 30.0})
    _, rows, missing = table_rows(p, "seeded")
    assert not missing
    r = next(r for r in rows if r["variant"] == "random" and r["task"] == "ZSL")
    assert r["mAP"] == pytest.approx(12.0) and r["mAP std"] == pytest.approx(2.0)
    assert r["seeds"] == 3
    md = to_markdown(p, "seeded", ["mAP"], rows, missing)
    assert "12.0 ± 2.0" in md and "30.0 ± 0.0" in md
    (p.path("results") / "cells" / "toyworld" / "random@s2" / "metrics.json").unlink()
    _, rows, missing = table_rows(p, "seeded")
    assert missing == ["toyworld/random@s2"]


AGREEMENT = {
    "demo": {
        "title": "t",
        "dataset": "toyworld",
        "seeds": [0, 1, 2],
        "pairs": {
            "m": {
                "method": "random",
                "reference": "clip_zeroshot-single",
                "source": "a paper",
                "published": {
                    "method": {"zsl": {"mAP": 50.0, "F1@3": 40.0, "F1@5": 30.0}},
                    "reference": {"zsl": {"mAP": 40.0, "F1@3": 41.0, "F1@5": 20.0}},
                },
            }
        },
    }
}


def test_agreement_counts_signs_beyond_two_std(tmp_path):
    p = _params(tmp_path, agreement=AGREEMENT)
    g = build_graph(p)
    deps = set(g["agreement@demo"].deps)
    assert "cell@toyworld@clip_zeroshot-single@s2" in deps  # reference row, every seed
    assert "cell@toyworld@clip_zeroshot@s0" in deps  # the information baseline
    # method: mAP ahead beyond noise (agrees), F1@3 ahead (paper: behind -> disagrees),
    # F1@5 ahead but noisy (within noise -> does not count)
    method = {0: (20.0, 30.0, 10.0), 1: (21.0, 31.0, 30.0), 2: (22.0, 32.0, 2.0)}
    for s, (m, f3, f5) in method.items():
        _fake_cell(p, f"random@s{s}", {"mAP": m, "F1@3": f3, "F1@5": f5})
        _fake_cell(p, f"clip_zeroshot-single@s{s}", {"mAP": 10.0, "F1@3": 20.0, "F1@5": 10.0})
        _fake_cell(p, f"clip_zeroshot@s{s}", {"mAP": 25.0, "F1@3": 20.0, "F1@5": 10.0})
    rows, summary = agreement_rows(p, "demo")
    by = {r["metric"]: r for r in rows}
    assert by["mAP"]["measured_diff"] == pytest.approx(11.0)
    assert by["mAP"]["measured_diff_std"] == pytest.approx(1.0)
    assert by["mAP"]["measured_sign"] == 1 and by["mAP"]["agrees"]
    assert by["F1@3"]["published_sign"] == -1 and not by["F1@3"]["agrees"]
    assert by["F1@5"]["measured_sign"] == 0 and not by["F1@5"]["agrees"]
    assert by["mAP"]["vs_baseline"]["sign"] == -1  # behind zero-shot CLIP, for information
    assert summary == [
        {
            "pair": "m",
            "method": "random",
            "reference": "clip_zeroshot-single",
            "source": "a paper",
            "agree": 1,
            "of": 3,
            "complete": True,
        }
    ]
    out = render_agreement(p, "demo")
    assert "1/3 agree" in (out / "agreement.md").read_text()


def test_agreement_with_missing_cells_says_so(tmp_path):
    p = _params(tmp_path, agreement=AGREEMENT)
    rows, summary = agreement_rows(p, "demo")
    assert summary[0]["agree"] == 0 and not summary[0]["complete"]
    assert all(r["measured_sign"] is None for r in rows)


def test_agreement_config_errors_name_the_key(tmp_path):
    bad = copy.deepcopy(AGREEMENT)
    bad["demo"]["pairs"]["m"]["reference"] = "nope"
    with pytest.raises(ConfigError, match="agreement.demo: unknown variant 'nope'"):
        _params(tmp_path, agreement=bad)


def test_agreement_on_the_all_labels_task_and_the_demo_names_the_sets_it_skips(tmp_path, capsys):
    """CoMC's pair compares the "all labels" task (every label novel, CoMC Table 1); an
    agreement set the demo does not run is named with its cost, not silently dropped."""
    from pipelines.cli import _print_other_agreements

    agreement = copy.deepcopy(AGREEMENT)
    agreement["demo"]["pairs"]["m"]["published"] = {
        "method": {"all": {"mAP": 48.2}},
        "reference": {"all": {"mAP": 36.4}},
    }
    p = _params(tmp_path, agreement=agreement)
    for s, m in zip((0, 1, 2), (20.0, 21.0, 22.0), strict=True):
        for variant, v in (("random", m), ("clip_zeroshot-single", 10.0), ("clip_zeroshot", 9.0)):
            folder = p.path("results") / "cells" / "toyworld" / f"{variant}@s{s}"
            write_json(folder / "metrics.json", {"zsl": {}, "gzsl": {}, "all": {"mAP": v}})
    rows, summary = agreement_rows(p, "demo")
    assert [(r["task"], r["metric"], r["agrees"]) for r in rows] == [("ALL", "mAP", True)]
    assert summary[0]["agree"] == 1 and summary[0]["of"] == 1
    _print_other_agreements(p)  # params without demo_agreement: every set is "more"
    said = capsys.readouterr().out
    assert (
        "ovml agreement demo" in said and "9 cells" in said
    )  # method, reference, baseline x 3 seeds
    assert "on toyworld" in " ".join(said.split()) and "none run by the demo" in said
    # a set on the demo's own dataset reuses the demo's cells and says so
    agreement["again"] = copy.deepcopy(agreement["demo"])
    p = _params(tmp_path, agreement=agreement, demo_agreement=["demo"])
    _print_other_agreements(p)
    said = " ".join(capsys.readouterr().out.split())
    assert "ovml agreement again" in said and "the demo reuses the ones it has" in said
    assert "ovml agreement demo`" not in said
