"""Handing a trained model to later stages: saved once, atomically, checked on every load.

Rank 0 writes ``<data_dir>/models/<app>-<task>/`` (mode 0700): the weights
(``model.pt``, mode 0600) under a temporary name, fsynced, then renamed, and
last a manifest (``model.json``) with the file's size and SHA-256 and the
caller's metadata, written the same way.  A directory without a manifest is
an unfinished save and is never read.  The task returns a :class:`ModelRef`
(a path and the manifest: small, picklable); a later stage loads the weights
for inference or to resume training, and a file that does not match its
manifest is refused with :class:`ModelCorruptError` naming it.

The payload is a dict of tensors and plain values (the model's
``state_dict``, optionally an optimizer's, an epoch counter...), loaded with
``torch.load(weights_only=True)``: nothing in the file can run code.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import time
from typing import Any, Dict, Optional

from ..permissions import make_dir, write_private
from ._torch import require_torch
from .errors import ModelCorruptError, ModelError

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.pt"
MANIFEST_NAME = "model.json"
FORMAT_VERSION = 1


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _unwrap(model: Any) -> Any:
    """The module inside a DDP (or DataParallel) wrapper."""
    return getattr(model, "module", model) if type(model).__name__ in ("DistributedDataParallel",
                                                                       "DataParallel") else model


class ModelRef:
    """A saved model on the shared filesystem: where it is and what it must contain.

    Parameters
    ----------
    path : str
        The model directory (holds ``model.pt`` and ``model.json``).
    manifest : dict
        The manifest: ``sha256``, ``nbytes``, ``meta`` (the caller's), ``task_id``...

    Notes
    -----
    Get one from :meth:`CylonContext.save_model` (or :meth:`ModelRef.open` on a
    directory).  Pickling carries the path and manifest only.
    """

    def __init__(self, path: str, manifest: Dict[str, Any]) -> None:
        self.path = path
        self.manifest = dict(manifest)

    @property
    def file(self) -> str:
        """The weights file."""
        return os.path.join(self.path, WEIGHTS_NAME)

    @property
    def meta(self) -> Dict[str, Any]:
        """What the saver passed as ``meta`` (hyper-parameters, metrics, the loss curve...)."""
        return dict(self.manifest.get("meta", {}))

    @property
    def sha256(self) -> str:
        return str(self.manifest["sha256"])

    @property
    def nbytes(self) -> int:
        return int(self.manifest["nbytes"])

    def __repr__(self) -> str:
        return f"ModelRef({self.path!r}, bytes={self.nbytes}, sha256={self.sha256[:12]}...)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelRef) and (self.path, self.sha256) == (other.path, other.sha256)

    def __hash__(self) -> int:
        return hash((self.path, self.sha256))

    @classmethod
    def open(cls, path: str) -> ModelRef:
        """The model saved in directory ``path`` (its manifest must be complete)."""
        manifest_path = os.path.join(path, MANIFEST_NAME)
        try:
            with open(manifest_path, encoding="utf-8") as f:
                manifest = json.load(f)
        except FileNotFoundError:
            raise ModelError(f"{manifest_path}: no model manifest (not a model directory, or an unfinished "
                             "save)") from None
        except ValueError as exc:
            raise ModelCorruptError(f"{manifest_path}: manifest is not valid JSON: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION or "sha256" not in manifest:
            raise ModelCorruptError(f"{manifest_path}: not a parsl_rcylon model manifest (format "
                                    f"{FORMAT_VERSION})")
        return cls(os.path.abspath(path), manifest)

    def verify(self) -> None:
        """Raise :class:`ModelCorruptError` unless the weights file has the recorded size and SHA-256."""
        try:
            size = os.stat(self.file).st_size
        except FileNotFoundError:
            raise ModelCorruptError(f"{self.file}: model file is missing") from None
        if size != self.nbytes:
            raise ModelCorruptError(f"{self.file}: model file is {size} bytes but its manifest says "
                                    f"{self.nbytes} (truncated, or replaced after it was saved)")
        actual = _sha256(self.file)
        if actual != self.sha256:
            raise ModelCorruptError(f"{self.file}: SHA-256 {actual[:16]}... does not match the manifest's "
                                    f"{self.sha256[:16]}... (the file was changed or damaged after it was saved)")

    def load(self, map_location: Any = "cpu") -> Dict[str, Any]:
        """The saved payload (``{"model": state_dict, ...}``), after checking the file.

        Raises
        ------
        ModelCorruptError
            The file is missing, of the wrong size, fails its checksum, or does not decode.
        """
        torch = require_torch()
        self.verify()
        with open(self.file, "rb") as f:
            data = f.read()
        try:
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except Exception as exc:
            raise ModelCorruptError(f"{self.file}: cannot load the model: {type(exc).__name__}: {exc}") from exc

    def load_into(self, model: Any, optimizer: Any = None, map_location: Any = "cpu") -> Dict[str, Any]:
        """Load the weights into ``model`` (and the optimizer state into ``optimizer``); return the payload."""
        payload = self.load(map_location=map_location)
        _unwrap(model).load_state_dict(payload["model"])
        if optimizer is not None:
            if "optimizer" not in payload:
                raise ModelError(f"{self.file}: saved without optimizer state, cannot resume the optimizer")
            optimizer.load_state_dict(payload["optimizer"])
        return payload


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", str(text)) or "model"


def _claim(root: str, name: str) -> str:
    make_dir(root)
    for attempt in range(1000):
        path = os.path.join(root, name if attempt == 0 else f"{name}.{attempt}")
        try:
            os.mkdir(path, 0o700)  # exclusive: two saves never share a directory
            os.chmod(path, 0o700)  # whatever the umask
            return path
        except FileExistsError:
            continue
    raise ModelError(f"{root}: 1000 model directories named {name} exist already")


def write_model(directory_root: str, name: str, payload: Dict[str, Any], meta: Optional[Dict[str, Any]] = None,
                info: Optional[Dict[str, Any]] = None) -> ModelRef:
    """Save ``payload`` (tensors and plain values) under ``directory_root/name``; return its :class:`ModelRef`."""
    torch = require_torch()
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    try:
        meta_json = json.loads(json.dumps(meta or {}))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model {name}: meta must be JSON-serializable: {exc}") from None
    path = _claim(directory_root, _safe(name))
    try:
        weights = os.path.join(path, WEIGHTS_NAME)
        write_private(weights, data)
        manifest = {
            "format": FORMAT_VERSION, "file": WEIGHTS_NAME, "nbytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "created": time.time(),
            "torch": torch.__version__, "keys": sorted(payload), "meta": meta_json, **(info or {}),
        }
        # The manifest last: its presence is what says the save finished.
        write_private(os.path.join(path, MANIFEST_NAME), json.dumps(manifest, indent=1).encode())
    except BaseException:
        for leftover in os.listdir(path):
            try:
                os.unlink(os.path.join(path, leftover))
            except OSError:
                pass
        os.rmdir(path)
        raise
    return ModelRef(path, manifest)


def save_model(ctx: Any, model: Any, optimizer: Any = None, meta: Optional[Dict[str, Any]] = None,
               name: Optional[str] = None, extra: Optional[Dict[str, Any]] = None) -> ModelRef:
    """Rank 0 saves ``model`` (unwrapped from DDP) under ``ctx.data_dir``; every rank returns the ref.

    Collective on ``ctx.comm``: a failure on rank 0 raises the same
    :class:`ModelError` on every rank.

    Parameters
    ----------
    ctx : CylonContext
        The task's context.
    model : torch.nn.Module
        The model (DDP-wrapped or not); its ``state_dict`` is saved.
    optimizer : torch.optim.Optimizer, optional
        Saved too, so that a later task can resume training.
    meta : dict, optional
        JSON-serializable facts kept in the manifest (hyper-parameters, metrics).
    name : str, optional
        Directory name (default ``<app>-<task id>``).
    extra : dict, optional
        More tensors or plain values for the payload (an epoch counter, a scaler's state).
    """
    where = f"task {ctx.task_id}"
    outcome: Any = None
    if ctx.rank == 0:
        try:
            if not ctx.data_dir:
                raise ModelError(f"{where}: the task has no data_dir to save the model under")
            payload: Dict[str, Any] = {"model": _unwrap(model).state_dict()}
            if optimizer is not None:
                payload["optimizer"] = optimizer.state_dict()
            payload.update(extra or {})
            ref = write_model(os.path.join(ctx.data_dir, "models"), name or f"{ctx.name or 'model'}-{ctx.task_id}",
                              payload, meta=meta, info={"task_id": str(ctx.task_id), "app": ctx.name,
                                                        "ranks": ctx.size})
            outcome = (ref.path, ref.manifest)
            logger.info("%s saved model %s (%d bytes)", where, ref.path, ref.nbytes)
        except Exception as exc:  # every rank raises it below
            outcome = f"{type(exc).__name__}: {exc}"
    if ctx.size > 1:
        outcome = ctx.comm.bcast(outcome, root=0)
    if isinstance(outcome, str):
        raise ModelError(f"{where}: rank 0 could not save the model: {outcome}")
    return ModelRef(*outcome)
