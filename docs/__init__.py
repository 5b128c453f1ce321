# Makes docs/conftest.py importable as ``docs.conftest``, so that pytest does
# not confuse it with tests/conftest.py (both directories are test roots).
