"""Loads parsl_rcylon's Radical Pilot adjustments into an RP process of this project's sessions.

This directory is put first on ``PYTHONPATH`` only for the RP processes of a
parsl_rcylon session (``rp_adjust.adjusted`` and ``rp_adjust.pre_bootstrap``);
Python imports ``sitecustomize`` from it at start.  ``RCYLON_RP_ADJUST`` names
the ``rp_adjust`` package's directory, which is loaded by path (as the
package ``_rcylon_rp_adjust``) so that no ``parsl_rcylon`` (and no Parsl)
import is paid by every RP process.  Another ``sitecustomize`` further down
the path still runs afterwards.
"""
import importlib.util
import os
import sys


def _load_adjustments() -> None:
    path = os.environ.get("RCYLON_RP_ADJUST")
    if not path:
        return
    spec = importlib.util.spec_from_file_location("_rcylon_rp_adjust", os.path.join(path, "__init__.py"),
                                                  submodule_search_locations=[path])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.install_in_rp_process()


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    mine = sys.modules.pop("sitecustomize", None)
    try:
        import sitecustomize  # noqa: F401  (the next one on the path, if any)
    except ImportError:
        pass
    finally:
        sys.path[:] = saved
        if mine is not None:
            sys.modules["sitecustomize"] = mine


_load_adjustments()
_chain()
