"""The chance level a transfer test compares a method's unseen mAP against."""

from __future__ import annotations

import numpy as np

from pipelines.metrics import mean_average_precision


def chance_map(labels: np.ndarray, draws: int = 5) -> float:
    """Mean mAP of ``draws`` uniform random score matrices (seeds 0..draws-1) on ``labels``."""
    return float(
        np.mean(
            [
                mean_average_precision(np.random.default_rng(i).random(labels.shape), labels)
                for i in range(draws)
            ]
        )
    )
