# %% [markdown]
# # Compare cells
# Reads every `results/cells/<dataset>/<variant>/metrics.json` and the MLflow runs.
# Read-only: nothing here trains or writes results.

# %%
import json
from pathlib import Path

import polars as pl

ROOT = Path.cwd() if (Path.cwd() / "params.yaml").exists() else Path(__file__).resolve().parent.parent
rows = []
for path in sorted((ROOT / "results" / "cells").glob("*/*/metrics.json")):
    m = json.loads(path.read_text())
    for task in ("zsl", "gzsl"):
        rows.append({"dataset": path.parent.parent.name, "variant": path.parent.name, "task": task,
                     **m.get(task, {})})
cells = pl.DataFrame(rows)
print(cells.sort(["dataset", "task", "mAP"], descending=[False, False, True]))

# %%
import mlflow  # noqa: E402

mlflow.set_tracking_uri(f"sqlite:///{ROOT / 'mlflow.db'}")
runs = mlflow.search_runs(search_all_experiments=True)
print(runs.filter(like="metrics.").head() if len(runs) else "no MLflow runs yet")
