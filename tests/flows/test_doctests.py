"""The docstring ``Example:`` blocks of every module of latticeflow.flows and actions run as doctests."""
import doctest
import importlib
import pkgutil

import pytest

import actions
import latticeflow.flows


def _modules(package) -> list[str]:
    return [package.__name__] + [f"{package.__name__}.{info.name}" for info in pkgutil.iter_modules(package.__path__)]


MODULES = _modules(latticeflow.flows) + _modules(actions)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (run doctest -v)"
