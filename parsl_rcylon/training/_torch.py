"""The one place the training layer imports torch, so a missing install reads as one clear error."""
from __future__ import annotations

from types import ModuleType

from .errors import TorchUnavailableError


def require_torch() -> ModuleType:
    """Import and return ``torch``, or raise :class:`TorchUnavailableError` saying how to install it."""
    try:
        import torch
    except ImportError as exc:
        raise TorchUnavailableError(
            "parsl_rcylon.training needs PyTorch on the worker ranks: "
            "pip install torch==2.13.0 'parsl_rcylon[train]' (CPU build; see docs/training.md)") from exc
    return torch
