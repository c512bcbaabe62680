"""Only what pyproject.toml cannot say yet without an experimental table: the C extension.

csvstore/_scan.c is the profiler's record counter (see csvstore/profiling.py). It is
optional: where no C compiler is found the install still succeeds and the profiler uses its
pure-Python counter, with the same results, more slowly.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("csvstore._scan", ["csvstore/_scan.c"], optional=True)])
