"""Report pages for analysts, built from arrays and ``metrics.json``: figures (matplotlib, no
display), the self-contained HTML page, and the two reports (test years with truth; external
observations without). The report stages read the stores and call these.

Rules (kept by tests/test_layout.py): no import of ``sgm.stages`` or ``sgm.cli``; every text
from a file or a config is escaped before it reaches HTML.
"""
