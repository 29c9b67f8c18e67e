"""Stage records reach Dagster, definitions stay light, MLflow runs link back (issue 14)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys

import dagster as dg
import pytest

from tests.conftest import REPO


def test_definitions_import_no_torch_or_method(tmp_path):
    """Loading the definitions must not import torch, open_clip, mlflow or any method."""
    probe = (
        "import sys, json, dagster_project.definitions as d; "
        "print(json.dumps(sorted(m for m in sys.modules if m in "
        "('torch', 'open_clip', 'mlflow', 'pipelines.cells') "
        "or (m.startswith('pipelines.methods.') and m != 'pipelines.methods.base'))))"
    )
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    env.pop("OVML_PARAMS", None)
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_code_deps_read_without_import():
    from pipelines.config import method_code_deps

    assert method_code_deps("qks") == ("pipelines/train.py",)
    assert method_code_deps("random") == ()


def test_method_options_checked_lazily(tmp_path, tiny_params_dict):
    from pipelines.config import ConfigError, load_params
    from tests.conftest import write_params

    tiny_params_dict["variants"]["clip_zeroshot"]["prompts"] = "many"
    path = write_params(tmp_path, tiny_params_dict)
    with pytest.raises(ConfigError, match="variants.clip_zeroshot.prompts"):
        load_params(path)
    params = load_params(path, check_methods=False)  # what Dagster's definitions do
    params.check_variant("random")
    with pytest.raises(ConfigError, match="variants.clip_zeroshot.prompts"):
        params.check_variant("clip_zeroshot")


def test_a_cell_process_checks_its_own_variant_only(tmp_path, tiny_params_dict):
    """`ovml stage cell` validates its own variant (a bad option exits 2 naming the key,
    also as the failure of the Dagster step that launched it), not every variant: a
    `random` cell's process imports no open_clip (issue 22 item 4: seconds a launch)."""
    from typer.testing import CliRunner

    from dagster_project.definitions import build_definitions
    from pipelines.cli import app
    from tests.conftest import write_params

    tiny_params_dict["tracking"] = {"enabled": False}
    tiny_params_dict["variants"]["clip_zeroshot"]["prompts"] = "many"
    path = write_params(tmp_path, tiny_params_dict)
    res = CliRunner().invoke(app, ["stage", "cell", "toyworld", "clip_zeroshot", "-p", str(path)])
    assert res.exit_code == 2 and "variants.clip_zeroshot.prompts" in res.output, res.output

    defs = build_definitions(str(path))
    cell = next(a for a in defs.assets if a.key.path == ["cells", "toyworld", "clip_zeroshot"])
    out = dg.materialize(
        [cell],
        resources=defs.resources,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not out.success
    (failure,) = [e for e in out.all_events if e.is_step_failure]
    tail = failure.step_failure_data.user_failure_data.metadata["output (tail)"].value
    assert "variants.clip_zeroshot.prompts" in tail

    probe = (
        "import sys; from pipelines.config import load_params; "
        f"p = load_params({str(path)!r}, check_methods=False); p.check_cell('toyworld', 'random'); "
        "import pipelines.cells, pipelines.methods.random; print('open_clip' in sys.modules)"
    )
    got = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert got.stdout.strip().splitlines()[-1] == "False"


def test_record_view_and_metadata(tiny_workspace, monkeypatch):
    from pipelines.config import load_params
    from pipelines.records import current_view, load_record, stage_view

    params = load_params(tiny_workspace)
    rec = load_record(params.root, "results/cells/toyworld/clip_zeroshot")
    assert rec["view"] == "cli" and rec["run_id"] is None and rec["finished_at"]
    assert 0 <= rec["metadata"]["zsl mAP"] <= 100 and rec["metadata"]["mlflow_run_id"]
    table = load_record(params.root, "results/tables/tiny")["metadata"]["table"]
    assert table["type"] == "table" and len(table["rows"]) == 6
    monkeypatch.setenv("DVC_STAGE", "cell__toyworld__random")
    assert current_view() == "dvc"
    with stage_view("dagster", "abc"):
        assert current_view() == "dagster"


def test_reconcile_reports_each_record_once_and_fresh(tiny_workspace, tmp_path):
    """What `ovml ui` does on start: every CLI record becomes a materialisation with its
    data version, inputs' provenance and metadata; the catalog then shows them fresh."""
    from dagster_project.definitions import build_definitions
    from dagster_project.records import reconcile
    from pipelines.config import load_params

    params = load_params(tiny_workspace, check_methods=False)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        reported = reconcile(instance, params)
        assert reported == [
            "dataset@toyworld",
            "backbone@toy-clip",
            "features@toyworld@toy-clip",
            "cell@toyworld@random",
            "cell@toyworld@clip_zeroshot",
            "cell@toyworld@clip_zeroshot-single",
            "table@tiny",
        ]
        assert reconcile(instance, params) == []  # nothing new: nothing reported twice
        ev = instance.get_latest_materialization_event(dg.AssetKey(["table", "tiny"]))
        mat = ev.asset_materialization
        assert mat.metadata["table"].value.records[0].data["variant"] == "random"
        assert mat.metadata["view"].value == "cli"
        cell = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(["cells", "toyworld", "clip_zeroshot"])),
            limit=1,
        ).records[0]
        meta = cell.asset_materialization.metadata
        assert "/runs/" in meta["mlflow_run"].value and "workflowType" in meta["mlflow_run"].value
        assert meta["mlflow_experiment"].value.endswith("/runs?workflowType=machine_learning")

        # staleness as the UI computes it: every asset fresh after the report
        from dagster._utils.test.data_versions import get_stale_status_resolver

        defs = build_definitions(str(tiny_workspace))
        resolver = get_stale_status_resolver(instance, list(defs.assets))
        for key in (
            ["dataset", "toyworld"],
            ["features", "toyworld", "toy-clip"],
            ["cells", "toyworld", "clip_zeroshot"],
        ):
            assert resolver.get_status(dg.AssetKey(key)).value == "FRESH", key
        assert resolver.get_status(dg.AssetKey(["table", "tiny"])).value == "FRESH"


def test_table_depends_on_exactly_its_cells(tiny_workspace):
    from dagster_project.definitions import build_definitions

    defs = build_definitions(str(tiny_workspace))
    table = defs.resolve_assets_def(dg.AssetKey(["table", "tiny"]))
    deps = {k.to_user_string() for k in table.asset_deps[table.key]}
    assert deps == {
        "cells/toyworld/random",
        "cells/toyworld/clip_zeroshot",
        "cells/toyworld/clip_zeroshot-single",
    }


def _two_backbones_seeded(tiny_params_dict: dict) -> dict:
    """TINY_PARAMS plus a second backbone read by one variant only, and a table that
    trains ``random`` over two seeds while ``tiny`` trains it once (issue 22 item 1)."""
    p = tiny_params_dict
    p["tracking"] = {"enabled": False}
    second = dict(p["backbones"]["toy-clip"])
    second["pretrain"] = dict(second["pretrain"], epochs=1)
    p["backbones"]["toy-clip-b"] = second
    p["variants"]["clip_zeroshot-b"] = {
        "method": "clip_zeroshot",
        "prompts": "pool",
        "backbone": "toy-clip-b",
    }
    p["tables"]["tiny"]["rows"].append("clip_zeroshot-b")
    p["tables"]["seeded"] = {
        "title": "seeded",
        "datasets": ["toyworld"],
        "rows": ["random"],
        "seeds": [0, 1],
    }
    return p


@pytest.mark.slow
def test_cell_assets_read_only_their_own_upstreams_and_are_fresh_after_a_cli_run(
    tmp_path, tiny_params_dict
):
    """No "Unsynced" on a fresh cell: each cell asset depends on exactly what its cells
    read, so after a CLI run every partition is FRESH in Dagster's own staleness, as in
    ``ovml list``; a params edit makes exactly that variant's asset stale."""
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from dagster_project.definitions import build_definitions
    from dagster_project.records import reconcile
    from pipelines.config import load_params
    from pipelines.graph import build_graph, is_fresh
    from pipelines.runner import run_stage, run_stages
    from tests.conftest import write_params

    path = write_params(tmp_path / "ws", _two_backbones_seeded(tiny_params_dict))
    params = load_params(path)
    assert run_stages(
        params, ["table@tiny", "table@seeded"], lambda p, st: run_stage(p, st, progress=False)
    )
    defs = build_definitions(str(path))
    cell = {a.key.path[2]: a for a in defs.assets if a.key.path[0] == "cells"}
    deps = {v: {k.to_user_string() for k in a.asset_deps[a.key]} for v, a in cell.items()}
    assert {"backbone/toy-clip-b", "features/toyworld/toy-clip-b"} <= deps["clip_zeroshot-b"]
    assert not any(d.endswith("/toy-clip") for d in deps["clip_zeroshot-b"])
    assert not any(d.endswith("/toy-clip-b") for d in deps["clip_zeroshot"] | deps["random"])
    random = cell["random"]
    assert random.partitions_def.get_partition_keys() == ["single", "s0", "s1"]
    seeded = defs.resolve_assets_def(dg.AssetKey(["table", "seeded"]))
    mapping = seeded.get_partition_mapping(random.key)
    assert isinstance(mapping, dg.SpecificPartitionsPartitionMapping)
    assert set(mapping.partition_keys) == {"s0", "s1"}

    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        assert "cell@toyworld@random@s1" in reconcile(instance, params)
        resolver = get_stale_status_resolver(instance, list(defs.assets))
        for variant, asset in cell.items():
            parts = asset.partitions_def.get_partition_keys() if asset.partitions_def else [None]
            for part in parts:
                status = resolver.get_status(asset.key, part)
                causes = [c.reason for c in resolver.get_stale_root_causes(asset.key, part)]
                assert status.value == "FRESH", (variant, part, causes)

        # a params edit of one variant: that asset is stale, in Dagster and in the CLI
        edited = _two_backbones_seeded(tiny_params_dict)
        edited["variants"]["clip_zeroshot-b"]["prompts"] = "single"
        write_params(tmp_path / "ws", edited)
        after = load_params(path)
        graph = build_graph(after)
        defs2 = build_definitions(str(path))
        resolver = get_stale_status_resolver(instance, list(defs2.assets))
        stale = {
            a.key.path[2]
            for a in defs2.assets
            if a.key.path[0] == "cells"
            and resolver.get_status(
                a.key, a.partitions_def.get_partition_keys()[0] if a.partitions_def else None
            ).value
            != "FRESH"
        }
        assert stale == {"clip_zeroshot-b"}
        assert not is_fresh(after, graph, "cell@toyworld@clip_zeroshot-b")
        assert is_fresh(after, graph, "cell@toyworld@random@s1")


def test_demo_job_materialises_what_ovml_demo_computes(tiny_workspace, tmp_path):
    from dagster_project.definitions import build_definitions
    from pipelines.config import load_params
    from pipelines.graph import build_graph, upstream

    defs = build_definitions(str(tiny_workspace))
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        res = defs.get_job_def("demo").execute_in_process(instance=instance)
        assert res.success
        got = {
            (tuple(m.asset_key.path), m.partition)
            for m in (e.materialization for e in res.get_asset_materialization_events())
        }
    params = load_params(tiny_workspace)
    graph = build_graph(params)
    want = set()
    for name in upstream(graph, ["table@tiny"]):
        st = graph[name]
        key = ("cells", *st.key) if st.kind == "cell" else (st.kind, *st.key)
        want.add((key, None))  # the tiny table trains each variant once: no seed partitions
    assert got == want


@pytest.fixture
def mlflow_params(tmp_path, tiny_params_dict):
    from pipelines.config import load_params
    from tests.conftest import write_params

    return load_params(write_params(tmp_path, tiny_params_dict))


def test_mlflow_runs_linked_superseded_and_killed(mlflow_params, tmp_path):
    import mlflow

    from pipelines.tracking import dagster_run, dataset_input, mlflow_run

    split = tmp_path / "test.npz"
    split.write_bytes(b"split bytes")

    def cell_run(**kw):
        with mlflow_run(
            mlflow_params, "ovml/t", "v1", tags={"variant": "v1"}, run_params={}, **kw
        ) as tr:
            return tr.run_id

    first = cell_run(description="variant one")
    with dagster_run("dagster-run-1", "http://d/runs/dagster-run-1"):
        second = cell_run(description="variant one", dataset=dataset_input("t/test", split))
    client = mlflow.MlflowClient()
    a, b = client.get_run(first), client.get_run(second)
    assert b.data.tags["dagster_run_id"] == "dagster-run-1"
    assert b.data.tags["dagster_run_url"] == "http://d/runs/dagster-run-1"
    assert "dagster_run_id" not in a.data.tags
    assert a.data.tags["mlflow.note.content"] == "variant one"
    # the description (markdown) links the Dagster run
    assert b.data.tags["mlflow.note.content"] == (
        "variant one\n\nLaunched by [Dagster run dagster-run-1](http://d/runs/dagster-run-1)."
    )
    # the superseded run is renamed, the current one keeps the cell's name
    assert (a.info.run_name, b.info.run_name) == ("v1 (superseded)", "v1")
    # the dataset input: name, digest of the split file, its path as the source
    (ds,) = b.inputs.dataset_inputs
    assert ds.dataset.name == "t/test"
    assert ds.dataset.digest == hashlib.sha256(b"split bytes").hexdigest()[:16]
    assert split.as_uri() in ds.dataset.source
    assert [t.value for t in ds.tags if t.key == "mlflow.data.context"] == ["evaluation"]
    assert b.data.tags["mlflow.source.git.commit"] == b.data.tags["git_sha"]
    assert (a.data.tags["current"], a.data.tags["superseded_by"]) == ("no", second)
    assert b.data.tags["current"] == "yes"
    exp = client.get_experiment(b.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"

    # a run its process left RUNNING (killed) is marked KILLED when the next one starts
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    ghost = client.create_run(
        b.info.experiment_id,
        run_name="v1",
        tags={"ovml.host": socket.gethostname(), "ovml.pid": dead.stdout.strip()},
    )
    assert client.get_run(ghost.info.run_id).info.status == "RUNNING"
    cell_run()
    assert client.get_run(ghost.info.run_id).info.status == "KILLED"


def test_dagster_staleness_agrees_with_ovml_list(tmp_path, tiny_params_dict, monkeypatch):
    """Data versions are output digests and code versions the stage's own code: a
    docstring edit whose reruns leave byte-identical outputs moves only the edited stage's
    code version and leaves its dependants fresh; a changed output makes them stale."""
    from dagster._utils.test.data_versions import get_stale_status_resolver

    import pipelines.graph as graph_module
    from dagster_project.definitions import build_definitions
    from dagster_project.records import reconcile
    from pipelines.config import load_params
    from pipelines.graph import build_graph, stage_status
    from pipelines.runner import run_stages
    from tests.conftest import write_params
    from tests.test_graph import _copy_of_the_code, deterministic_stage

    tiny_params_dict["tracking"] = {"enabled": False}
    path = write_params(tmp_path / "ws", tiny_params_dict)
    params = load_params(path, check_methods=False)
    graph = build_graph(params)
    monkeypatch.setattr(graph_module, "REPO_ROOT", _copy_of_the_code(graph, tmp_path / "code"))
    run_stages(params, ["table@tiny"], deterministic_stage)
    features = ["features", "toyworld", "toy-clip"]
    dataset, table = dg.AssetKey(["dataset", "toyworld"]), dg.AssetKey(["table", "tiny"])

    def status(instance, key):
        reconcile(instance, params)
        defs = build_definitions(str(path))  # code versions as the code now reads
        return get_stale_status_resolver(instance, list(defs.assets)).get_status(key).value

    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        assert status(instance, table) == "FRESH"
        code = graph_module.REPO_ROOT / "pipelines/vlp/features.py"  # a docstring edit
        code.write_text(code.read_text().replace('"""', '"""An edited docstring. ', 1))
        assert status(instance, dg.AssetKey(features)) == "STALE"  # its code version moved
        assert status(instance, dataset) == "FRESH"
        assert stage_status(params, graph, "table@tiny") == (True, "up to date")
        assert status(instance, table) == "FRESH"  # as in `ovml list`
        assert run_stages(params, ["table@tiny"], deterministic_stage) == ["@".join(features)]
        assert status(instance, dg.AssetKey(features)) == "FRESH"  # rerun, same bytes
        assert status(instance, table) == "FRESH"

        def writes_other_bytes(p, st):
            (p.root / st.out / "out.json").write_text('{"mAP": 1.0}')

        cell = "cell@toyworld@random"
        run_stages(params, [cell], writes_other_bytes, force_only=[cell])
        assert stage_status(params, graph, "table@tiny") == (
            False,
            f"outputs of upstream {cell} changed",
        )
        assert status(instance, table) == "STALE"  # its input data version moved
