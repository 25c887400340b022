"""`DataMismatch`: data (hidden states, a draft vocab) produced for another recipe or target.

Why its own module: the trainer's data checks, its integrity pass, its sources and the vocab stage's
loader all raise it, and the trainer's entry point catches it to print one line; defined beside any one
of them it pulled the others into an import cycle.
"""

from __future__ import annotations


class DataMismatch(ValueError):
    """The data (hidden states or vocab) was produced for another recipe or target; the message says how to fix it."""
