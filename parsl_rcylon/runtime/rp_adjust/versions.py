"""The releases of Radical Pilot these adjustments were written for, and the way to run without them.

The patches replace or wrap private RP functions, so they are written for one
release: :func:`check_versions` refuses any other ``radical.pilot`` /
``radical.utils`` (in the client, and in every RP process the hook loads
into).  ``RCYLON_RP_STOCK=1`` runs Radical Pilot unchanged instead: RP's
bridges then listen on every interface with no authentication, which lets
another user of the machine run commands as you (``docs/security.md``).
Use it only on a machine nobody else can log in to.
"""
from __future__ import annotations

import logging
import os
from typing import Dict

logger = logging.getLogger(__name__)

#: The releases these adjustments were written for: (distribution, major.minor).
WRITTEN_FOR = (("radical.pilot", "1.103"), ("radical.utils", "1.103"))

#: Set to 1 to run stock Radical Pilot without any adjustment (insecure: see the module docstring).
ENV_STOCK = "RCYLON_RP_STOCK"


class RadicalVersionError(RuntimeError):
    """The installed Radical Pilot or Radical Utils is not the release these adjustments were written for."""


def stock() -> bool:
    """Whether the user asked to run Radical Pilot without adjustments (``RCYLON_RP_STOCK=1``)."""
    return os.environ.get(ENV_STOCK, "").lower() in ("1", "true", "yes", "on")


def check_versions() -> Dict[str, str]:
    """Return the installed ``radical.pilot`` and ``radical.utils`` versions, or raise.

    Raises
    ------
    RadicalVersionError
        A version other than the one of :data:`WRITTEN_FOR`, unless
        ``RCYLON_RP_STOCK=1`` asks to run Radical Pilot without adjustments.
    """
    from importlib.metadata import PackageNotFoundError, version

    found: Dict[str, str] = {}
    for dist, release in WRITTEN_FOR:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "not installed"
        if not stock() and not (found[dist] == release or found[dist].startswith(release + ".")):
            raise RadicalVersionError(
                f"parsl_rcylon adjusts {dist} {release}.x (found {found[dist]}); install the tested release "
                f"with: pip install '{dist}>={release},<{_next(release)}'. To run Radical Pilot unchanged "
                f"anyway set {ENV_STOCK}=1: insecure, RP's sockets then accept any local user "
                "(see docs/security.md)")
    return found


def _next(release: str) -> str:
    major, minor = release.split(".")
    return f"{major}.{int(minor) + 1}"
