"""Clients of the radplan layers: the `radplan` command (``radplan_cli.main``), the demo, audit, lake and doc tools.

Run as ``radplan ...`` or ``python -m radplan_cli.main ...``. (Not ``python -m radplan_cli``: a package's
``__main__`` leaves spawned worker processes without a main module, which pyspark takes for a doctest run.)
"""
