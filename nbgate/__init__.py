"""nbgate: data-science notebooks as pytest cases with metric gates.

Notebooks use ``from nbgate import record, record_figure``; this module stays import-light
because every kernel imports it.
"""

from nbgate.running.recording import record, record_figure

__all__ = ["record", "record_figure"]
__version__ = "0.1.0"
