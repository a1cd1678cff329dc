"""nbgate's benchmark (``make bench``, i.e. ``python -m bench``).

It builds its own notebook projects, runs nbgate (as a user gets it: MLflow tracking on) and
the alternatives (the papermill CLI, ``pytest --nbmake``, a plain script) as subprocesses,
interleaved and repeated, and writes the values that SPEC §11 budgets to ``bench/RESULTS.md``.
Nothing here is imported by nbgate.

- ``__main__``: the command, the sizes (FULL, SMOKE), what is compared and each budget;
- ``projects``: the generated projects and the commands timed in them;
- ``measure``: running them interleaved, the collection probe, the machine's description;
- ``report``: the comparisons and the markdown report;
- ``probe``: the pytest plugin the collection probe loads into the measured process.
"""
