"""Chance level: uniform random scores. The floor every table row is read against."""

from __future__ import annotations

import numpy as np

from pipelines.methods.base import CellContext, Method, MethodConfig


class Config(MethodConfig):
    seed_offset: int = 0


class RandomScores(Method):
    Config = Config

    def predict(self, ctx: CellContext) -> np.ndarray:
        rng = np.random.default_rng(ctx.seed + self.config.seed_offset)
        return rng.random((len(ctx.test_labels), ctx.n_labels), dtype=np.float32)


METHOD = RandomScores
