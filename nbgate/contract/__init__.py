"""The contract between nbgate's two wings.

The harness (``nbgate``: config, cases, execution) produces case results; the reporting wing
(``reporting``: report files, GitLab publishing, promotion) renders and publishes them. The
reporting wing imports nothing from the harness but this package:

- ``model``: the case result and its threshold rules as data;
- ``codec``: the one JSON shape of a result and the ``metrics.json`` document (with its schema);
- ``session``: the one accessor for a pytest session's results;
- ``ci_context``: the GitLab CI context a run records;
- ``failure_text``: how a failure reads in the terminal and JUnit;
- ``text``, ``files``: the text and file rules every report follows.

Modules here import only the standard library (and pytest for the session accessor).
"""
