"""Scoring a table share with a model: batches in stored order, no collectives, no gradients."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ._torch import require_torch
from .loader import local_batches


def predict(model: Any, table: pa.Table, features: Sequence[str], batch_size: int = 65536,
            device: Any = None, dtype: str = "float32") -> np.ndarray:
    """``model``'s outputs for every row of ``table``, in row order, as a numpy array.

    Runs on one rank's rows (each rank of a scoring task scores its own
    share); outputs of shape ``(b, 1)`` are flattened to ``(b,)``.
    """
    torch = require_torch()
    device = torch.device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    outputs = []
    try:
        with torch.inference_mode():
            for x in local_batches(table, features, batch_size=batch_size, dtype=dtype):
                y = model(x.to(device))
                outputs.append(y.reshape(y.shape[0], -1).cpu().numpy())
    finally:
        model.train(was_training)
    if not outputs:
        return np.empty(0, dtype=dtype)
    out = np.concatenate(outputs)
    return out[:, 0] if out.shape[1] == 1 else out
