"""The executor's runtime, laid out by where each module runs.

- ``client/``: in the user's Python process (the executor's side of the wire):
  the dispatcher and its rank registry, placement and admission, the Radical
  Pilot session, pilot descriptions, the client's process hygiene.
- ``agent/``: inside the pilot: the RAPTOR master, the MPI worker and what
  runs one task on one rank.
- ``wire/``: what both sides speak: the task, the messages, the authenticated
  channel.
- ``attach/``: ``parsl-rcylon up``'s pilot server and the client of an
  executor made with ``attach=``.
- ``guard.py``: a standalone watchdog process beside the client.
- ``processes.py``, ``startup.py``, ``layout.py``: used on both sides (finding
  a session's processes, the lean RP start-up, where RP keeps a run's files).
"""
