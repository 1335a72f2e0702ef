"""Reproducible benchmarks of parsl_rcylon (``parsl-rcylon bench ...``).

``stages`` holds the pipeline stages shared by every mode (they run inside
``cylon_app`` tasks and inside bare ``mpiexec`` jobs alike), ``ops_script``
is the bare-metal/batch entry point run under ``mpiexec``, ``paper`` the
reproduction of the Radical-Cylon paper's experiments and ``report`` its
tables and figures.
"""
