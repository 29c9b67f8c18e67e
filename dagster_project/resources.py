"""Dagster resources: where params.yaml is, how runs are tracked, where tensors compute."""

from __future__ import annotations

import os

import dagster as dg

from pipelines.config import DEFAULT_PARAMS, Params, TrackingConfig, load_params


class OvmlParams(dg.ConfigurableResource):
    """params.yaml (the grid); override the file with OVML_PARAMS or in run config.

    Loaded without validating variant options against the method configs (that would
    import torch); a cell validates its own variant before it runs."""

    params_path: str = os.environ.get("OVML_PARAMS", str(DEFAULT_PARAMS))

    def load(self) -> Params:
        return load_params(self.params_path, check_methods=False)


class MlflowTracking(dg.ConfigurableResource):
    """MLflow store: params.yaml's ``tracking`` unless overridden (e.g. a cluster server)."""

    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else params' tracking.uri
    enabled: bool = True

    @classmethod
    def from_env(cls) -> MlflowTracking:
        """Reads MLFLOW_TRACKING_URI through ``dg.EnvVar`` (resolved at run time), so the
        UI's resource snapshot shows the variable's name, never its value (credentials)."""
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return cls(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"))
        return cls()

    def apply(self, params: Params) -> Params:
        tracking = TrackingConfig(
            enabled=self.enabled and params.tracking.enabled,
            uri=self.tracking_uri or params.tracking.uri,
        )
        return params.model_copy(update={"tracking": tracking})


class Compute(dg.ConfigurableResource):
    """Where backbones and methods run: device (auto/cpu/cuda) and CPU threads."""

    device: str | None = None
    num_threads: int | None = None

    def apply(self, params: Params) -> Params:
        update = {}
        if self.device:
            update["device"] = self.device
        if self.num_threads is not None:
            update["num_threads"] = self.num_threads
        return params.model_copy(update=update)
