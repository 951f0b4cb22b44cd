"""Probe programs that call the fake NVML library through pynvml's real ctypes calls.

pynvml keeps the library it loaded for the life of a process, so tests/test_fakenvml.py runs
each probe in a fresh interpreter with ``LD_LIBRARY_PATH`` on the fake library::

    python -m tests.nvml_probes every_field

A probe fills a dict of findings, which ``__main__`` prints as one ``RESULT <json>`` line.
The scenarios a probe writes mid-run come from :mod:`tests.nvml_probes.scenarios`, which does
not import pynvml, so the tests import it too.
"""
