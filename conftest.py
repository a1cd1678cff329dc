"""The example project's pytest setup.

Kernels inherit this process's environment, so settings made here reach every notebook case:
headless plotting (CI runners have no display) and no progress bars in captured output.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_DISABLE", "1")
