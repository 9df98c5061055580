"""Kernel variants probed on the GPU and recorded in ``benchmarks/kernel_notes.md``: modified or
alternative forms of the package's sparse GEMV, kept for reading and re-running. Importable as
``kernel_variants.NAME`` with ``benchmarks/`` on ``sys.path`` (as the probes and the tests set
it); the older variants that ``tile_probe.py``, ``gemv_pattern_probe.py`` and ``config_sweep.py``
take as ``--*-file`` arguments are loaded by path.
"""
