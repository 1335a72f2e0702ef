"""workflows/preprocess_train.py end to end at its quick size, on the session's pilot."""
from __future__ import annotations

import json
import os

import pytest

from workflows import preprocess_train

pytestmark = pytest.mark.integration


def test_workflow_beats_the_baseline(rcylon, tmp_path) -> None:
    metrics = preprocess_train.run_pipeline(str(tmp_path / "out"), sample=3, epochs=3)
    model, baseline = metrics["model"], metrics["baseline"]
    # Real 2013 flights, every third day: about 107,000 after cleaning, 27,000 in the test period.
    assert metrics["rows_prepared"] > 100_000 and metrics["test_flights"] > 20_000, metrics
    assert model["auc"] > 0.65, model
    assert model["log_loss"] < baseline["log_loss"] - 0.02, (model, baseline)
    assert model["brier"] < baseline["brier"], (model, baseline)
    assert metrics["loss_curve"][-1] < metrics["loss_curve"][0]
    assert os.path.getsize(metrics["plot"]) > 10_000
    with open(metrics["metrics_file"]) as f:
        assert json.load(f)["model"] == model
