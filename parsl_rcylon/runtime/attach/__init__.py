"""A pilot that outlives its scripts: ``parsl-rcylon up``, executors that attach to it, ``down``.

A cold start costs seconds of Radical Pilot start-up; a notebook or an
edit-run loop pays them once.  ``parsl-rcylon up`` starts a *pilot server*
(:func:`parsl_rcylon.serving.serve`, in a detached process of its own): an ordinary
:class:`~parsl_rcylon.RadicalCylonExecutor` with its session, pilot, masters
and warm workers, plus a front door for scripts.  An executor made with
``attach=<run dir>`` connects to that door instead of starting a pilot
(:class:`~.client.AttachedPilot`, a :class:`~..client.backend.TaskBackend`
like the dispatcher) and its tasks
run at once on the warm ranks.

Nothing of a normal start is given up:

* The front door is the run's authenticated channel (:mod:`.channel`): a
  fresh CurveZMQ server key pair whose secret stays in the server's memory,
  a client key pair and token in ``<run dir>/attach/keys/channel.json``
  (0700/0600), so only this user's processes that can read it connect; the
  client pins the server key.  Every message is checked
  (:mod:`.protocol`); a submitted task is validated against the pools like
  any other, and the only frame the client unpickles is an outcome from the
  authenticated server.
* The server is an executor like any other: its guard, heartbeats to ranks
  and masters, worker replacement and walltimes all run.  A killed server is
  cleaned up by its guard; a server whose clients all left ends itself after
  ``idle_timeout`` seconds with no client and no task; ``down`` ends it on
  request (SIGTERM, then the executor's shutdown and final sweep).
* Server and client watch each other: the client sends a heartbeat every
  ``heartbeat_period``; a client silent for ``heartbeat_threshold`` is
  dropped (its running tasks finish, their outcomes go nowhere); a server
  that stops answering, or whose process is gone, fails every waiting
  future with :class:`~..errors.ExecutorBroken`.

Several scripts may attach one after another or at the same time; each
gets its own task ids on the server.


The package is split by concept: :mod:`.info` (``pilot.json``, what the server
publishes), :mod:`.server` (the front door), :mod:`.client` (what an attached
executor submits to) and :mod:`.detached` (starting and ending the server's
process).  What builds the executor the server fronts lives above the runtime,
in :mod:`parsl_rcylon.serving`.
"""
from .info import ATTACH_DIR, IDLE_TIMEOUT, INFO_FILE, AttachError, PilotInfo, UntrustedInfoError

__all__ = ["ATTACH_DIR", "AttachError", "IDLE_TIMEOUT", "INFO_FILE", "PilotInfo", "UntrustedInfoError"]
