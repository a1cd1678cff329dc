"""nbgate's benchmark (``make bench``, i.e. ``python -m bench``).

It builds its own notebook projects, runs nbgate and the alternatives (the papermill CLI,
``pytest --nbmake``, a plain script) as subprocesses, interleaved and repeated, and writes the
ratios that SPEC §11 budgets to ``bench/RESULTS.md``. Nothing here is imported by nbgate.
"""
