"""``latticeflow bench NAME --json`` prints strict JSON for every registered benchmark (NaN and inf as null):
the CLI's lookup in `latticeflow.bench.BENCHES` is exercised with each bench's run function stubbed."""
import importlib
import json
import math

import pytest

from latticeflow.bench import BENCHES
from latticeflow.cli import main


def _refuse(constant):
    raise ValueError(f"non-strict JSON constant {constant}")


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_bench_json_is_strict(name, monkeypatch, capsys):
    entry = BENCHES[name]
    module = importlib.import_module(f"latticeflow.bench.{entry.module}")
    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        return {"benchmark": name, "nan": math.nan, "nested": {"inf": math.inf, "list": [1.0, -math.inf]}}

    monkeypatch.setattr(module, entry.run, fake)
    assert main(["bench", name, "--json", "--quick"]) == 0
    doc = json.loads(capsys.readouterr().out, parse_constant=_refuse)
    assert doc["nan"] is None and doc["nested"] == {"inf": None, "list": [1.0, None]}
    if "quick" in entry.flags.split():
        assert seen.get("quick") is True
