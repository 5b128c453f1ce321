"""
pytest set-up for the doctests of the guide (``--doctest-rst`` on docs/).

Each page's doctests run in a scratch folder, so that the files they write
(``demo_field/``, ``classified.ecsv``) land in ``tmp_path``, never in the
checkout. The gallery scripts and the Sphinx configuration are not test
modules: the docs build runs them.
"""

import pytest

collect_ignore = ["conf.py", "sg_execution_times.rst"]
collect_ignore_glob = ["examples/*", "auto_examples/*", "api/*", "_build/*"]


@pytest.fixture(autouse=True)
def _scratch_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def pytest_collection_modifyitems(config, items):
    # classify() summarises flagged sources in one StarGalaxyWarning, as a
    # user sees it; the guide quotes it and shows the flags from the table,
    # so here it must not turn into an error (the suite's filter is "error").
    for item in items:
        if item.path.suffix == ".rst":
            item.add_marker(pytest.mark.filterwarnings(
                "ignore::astro_starglx.StarGalaxyWarning"))
