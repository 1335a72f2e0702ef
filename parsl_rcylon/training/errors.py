"""Named exceptions of the training layer (``parsl_rcylon.training``)."""
from __future__ import annotations


class TrainingError(RuntimeError):
    """Base class of errors raised by ``parsl_rcylon.training``."""


class TorchUnavailableError(TrainingError, ImportError):
    """torch is not installed where a training call runs (``pip install 'parsl_rcylon[train]'``)."""


class ProcessGroupError(TrainingError):
    """The task's ``torch.distributed`` group could not be set up or was used wrongly."""


class PeerFailedError(ProcessGroupError):
    """Another rank of the task failed, and this rank's collective was aborted because of it.

    Attributes
    ----------
    failed_rank : int or None
        The rank that reported the failure first, when it could say so.
    """

    def __init__(self, message: str, failed_rank: int | None = None) -> None:
        super().__init__(message)
        self.failed_rank = failed_rank

    def __reduce__(self):
        return (type(self), (str(self), self.failed_rank))


class LoaderError(TrainingError):
    """Bad input to :func:`~parsl_rcylon.training.loader.TorchLoader` (names the column, rank or task)."""


class ModelError(TrainingError):
    """A model could not be saved or loaded."""


class ModelCorruptError(ModelError):
    """A saved model's file does not match its manifest (size or checksum); names the file."""
