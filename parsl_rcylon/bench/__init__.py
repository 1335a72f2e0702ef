"""What the paper benchmark's ranks import: the pipeline stages (``stages``).

The harness itself (``benchmarks/paper.py``, its bare ``mpiexec`` job script
``benchmarks/paper_job.py`` and its report) lives outside the package;
``stages`` stays here because both the pilot's ranks (the stages run as
``cylon_app`` tasks, pickled by reference) and the bare-metal jobs import it.
"""
