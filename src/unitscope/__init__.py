"""unitscope: what single units of a vision CNN do, proven with interventions.

Importing the package is cheap (no torch); each stage lives in its own module.
"""

__version__ = "0.1.0"
