"""The docstring ``Example:`` blocks of every module of latticeflow and actions run as doctests."""
import doctest
import importlib
import pkgutil

import pytest

import actions
import latticeflow


def _modules(package) -> list[str]:
    return [package.__name__] + [info.name for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
                                 if not info.name.endswith("__main__")]


MODULES = _modules(latticeflow) + _modules(actions)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (run doctest -v)"
