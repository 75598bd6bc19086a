"""Build step for the one compiled helper (everything else is in pyproject.toml).

``castream._components`` (BoxAcc's component tree) is optional: without a C compiler the install still
succeeds and castream falls back to an exact but slower scipy loop (see metrics/localization.py).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("castream._components", ["src/castream/_components.c"], optional=True)])
