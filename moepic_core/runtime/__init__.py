"""The engine at run time (torch): the expert store, the kernels, the offloaded forward, generation.

Entry point: `runtime.engine.Engine` (also `from moepic_core import Engine`).
"""
