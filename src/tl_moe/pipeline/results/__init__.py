"""Each section's :class:`~tl_moe.pipeline.protocol.Result`: an analysis's numbers as the report shows them.

A section (``pipeline/sections/NAME.py``) is the adapter that feeds an analysis of ``tl_moe.analysis``
from a run and wraps its outcome; the Result here turns that outcome into the report's metrics,
findings, tables and figures. The method itself never lives here.
"""
