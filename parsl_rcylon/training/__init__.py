"""Training stages on a task's ranks: PyTorch DDP, a loader over table shares, model hand-off.

Nothing here imports torch at import time; the calls that need it raise
:class:`TorchUnavailableError` with the install command when it is missing.
The usual entry points are the ``CylonContext`` methods
``ctx.torch_process_group()``, ``ctx.torch_loader(...)`` and
``ctx.save_model(...)``; see docs/training.md.
"""
from __future__ import annotations

from .errors import (
    LoaderError,
    ModelCorruptError,
    ModelError,
    PeerFailedError,
    ProcessGroupError,
    TorchUnavailableError,
    TrainingError,
)
from .inference import predict
from .loader import TorchLoader
from .model import ModelRef, save_model
from .process_group import TorchProcessGroup

__all__ = [
    "LoaderError", "ModelCorruptError", "ModelError", "ModelRef", "PeerFailedError", "ProcessGroupError",
    "TorchLoader", "TorchProcessGroup", "TorchUnavailableError", "TrainingError", "predict", "save_model",
]
