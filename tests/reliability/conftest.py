"""Soak tests run only when selected (-m soak): they take minutes."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    if "soak" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="soak test: select it with -m soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gateway_class(request):
    """tests/conftest.py's Gateway, for module-scoped daemons (that conftest is not importable by name here)."""
    from pathlib import Path

    root_conftest = Path(__file__).resolve().parent.parent / "conftest.py"
    module = request.config.pluginmanager.get_plugin(str(root_conftest))
    assert module is not None, f"{root_conftest} is not loaded"
    return module.Gateway
