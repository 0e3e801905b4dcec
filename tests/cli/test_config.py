"""Config validation: every bad key or value is named in one line."""
from pathlib import Path

import pytest

from latticeflow.config import ConfigError, apply_overrides, config_from_dict, config_to_yaml, load_config

PHI4 = {"theory": "phi4", "shape": [8, 8], "kappa": 0.2, "lam": 0.0}


@pytest.mark.parametrize("data,message", [
    ({"action": {**PHI4, "kapa": 0.2}}, "unknown config key 'action.kapa' (did you mean 'action.kappa'?)"),
    ({"action": PHI4, "samplr": {}}, "unknown config key 'samplr' (did you mean 'sampler'?)"),
    ({"action": PHI4, "sampler": {"n_sampls": 3}}, "'sampler.n_sampls'"),
    ({"action": {**PHI4, "shape": [0, 8]}}, "action.shape must be positive lattice extents, got [0, 8]"),
    ({"action": {**PHI4, "shape": [-4, 8]}}, "action.shape"),
    ({"action": {"theory": "u1", "shape": [8, 8], "beta": -1.0}}, "action.beta must be > 0, got -1.0"),
    ({"action": {"theory": "u1", "shape": [8, 8], "beta": 0}}, "action.beta must be > 0, got 0"),
    ({"action": {**PHI4, "kappa": 0.3}}, "action.kappa must satisfy |kappa| < 0.25 at lam = 0"),
    ({"action": {**PHI4, "lam": -0.1}}, "action.lam must be >= 0, got -0.1"),
    ({"action": {"theory": "phi5", "shape": [8, 8]}}, "action.theory must be one of phi4, u1, schwinger, got 'phi5'"),
    ({"action": PHI4, "sampler": {"n_chains": 0}}, "sampler.n_chains must be >= 1, got 0"),
    ({"action": PHI4, "sampler": {"step_size": "big"}}, "sampler.step_size must be a number, got 'big'"),
    ({"action": PHI4, "dtype": "float16"}, "dtype must be 'float32' or 'float64', got 'float16'"),
    ({"sampler": {}}, "config needs an 'action' section"),
])
def test_bad_config_names_key_and_value(data, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_defaults_and_round_trip(tmp_path):
    cfg = config_from_dict({"action": PHI4})
    assert cfg.sampler.name == "hmc" and cfg.seed == 0 and cfg.dtype == "float64"
    assert str(cfg.output_dir).endswith("latticeflow")
    path = tmp_path / "c.yaml"
    path.write_text(config_to_yaml(cfg))
    again, _ = load_config(path)
    assert again == cfg


def test_overrides_are_parsed_as_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("action: {theory: u1, shape: [8, 8], beta: 1.0}\n")
    cfg, text = load_config(path, ["action.beta=2.5", "action.shape=[16,16]", "sampler.n_chains=4"])
    assert cfg.action.beta == 2.5 and cfg.action.shape == [16, 16] and cfg.sampler.n_chains == 4
    assert "beta: 2.5" in text
    with pytest.raises(ConfigError, match="--set expects key.sub=value"):
        apply_overrides({}, ["action.beta"])


def test_standard_form_config_builds_the_same_theory():
    from latticeflow.config import build_action

    hop = build_action(config_from_dict({"action": {"theory": "phi4", "shape": [8, 8], "kappa": 0.3, "lam": 0.022}}).action)
    std = build_action(config_from_dict({"action": {"theory": "phi4", "shape": [8, 8], "m2": hop.m2, "lam4": hop.lam4}}).action)
    assert abs(std.kappa - 0.3) < 1e-12 and abs(std.lam - 0.022) < 1e-12


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found: 'nope.yaml'"):
        load_config("nope.yaml")


@pytest.mark.parametrize("train,message", [
    ({"seconds": 0}, "train.seconds must be > 0, got 0.0"),
    ({"seconds": -5}, "train.seconds must be > 0, got -5.0"),
    ({"seconds": "long"}, "train.seconds must be a number, got 'long'"),
    ({"scheduler": "foo"}, "train.scheduler must be null, 'plateau' or 'cosine', got 'foo'"),
    ({"scheduler": "cosine", "warmup_steps": -1}, "train.warmup_steps must be >= 0, got -1"),
    ({"scheduler": "cosine", "warmup_steps": 2.5}, "train.warmup_steps must be an integer, got 2.5"),
    ({"scheduler": "cosine", "steps": 100, "warmup_steps": 100}, "train.warmup_steps must be < train.steps (100), got 100"),
    ({"warmup_steps": 10}, "train.warmup_steps applies to train.scheduler 'cosine' only, got warmup_steps=10 with scheduler None"),
    ({"scheduler": "cosine", "lr": 1e-3, "lr_min": 0.01}, "train.lr_min must be in [0, train.lr = 0.001], got 0.01"),
    ({"lr_min": -1e-4}, "train.lr_min must be in [0, train.lr = 0.001], got -0.0001"),
    ({"init": 3}, "train.init must be a string, got 3"),
    ({"init": ""}, "train.init must be a checkpoint path or null, got ''"),
])
def test_bad_budget_schedule_and_init_keys(train, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"action": PHI4, "train": train})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_budget_schedule_and_init_defaults_and_round_trip(tmp_path):
    t = config_from_dict({"action": PHI4}).train
    assert (t.seconds, t.scheduler, t.warmup_steps, t.lr_min, t.init) == (None, None, 0, 0.0, None)
    cfg = config_from_dict({"action": PHI4, "train": {"seconds": 300, "scheduler": "cosine", "warmup_steps": 50,
                                                      "lr_min": 1e-5, "init": "runs/a"}})
    assert (cfg.train.seconds, cfg.train.warmup_steps, cfg.train.lr_min, cfg.train.init) == (300.0, 50, 1e-5, "runs/a")
    path = tmp_path / "c.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path)[0] == cfg


CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHIPPED = sorted(p.name for p in CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_loads_and_builds_its_flow(name):
    """Each file in configs/ passes validation, and its flow (if any) builds for its action."""
    from latticeflow.config import build_action
    from latticeflow.flows import build_flow

    cfg, _ = load_config(CONFIGS / name)
    flow = build_flow(cfg.flow, build_action(cfg.action))
    assert sum(p.numel() for p in flow.parameters()) > 0


@pytest.mark.parametrize("text,value", [("1e-3", 1e-3), ("1.0e-3", 1e-3), ("5E-4", 5e-4), ("+2e-2", 2e-2),
                                        ("0.001", 1e-3), ("1e0", 1.0)])
def test_exponent_notation_without_a_dot_is_a_number(tmp_path, text, value):
    path = tmp_path / "c.yaml"
    path.write_text(f"action: {{theory: u1, shape: [8, 8], beta: 1.0}}\ntrain: {{lr: {text}}}\n")
    cfg, resolved = load_config(path)
    assert cfg.train.lr == value and isinstance(cfg.train.lr, float)
    again, _ = load_config(path, [f"train.lr={text}", f"action.beta={text}"])
    assert again.train.lr == value and again.action.beta == value
    assert load_config(tmp_path / "c.yaml")[0] == cfg and "lr: " in resolved


def test_integers_stay_integers_and_integral_exponents_count(tmp_path):
    from latticeflow.config_yaml import parse_yaml

    assert parse_yaml("a: 100\nb: 1_000\nc: 0x10\nd: -3") == {"a": 100, "b": 1000, "c": 16, "d": -3}
    assert all(type(v) is int for v in parse_yaml("a: 100\nb: -3").values())
    assert parse_yaml("a: 1e5\nb: 1.5\nc: .inf\nd: '1e-3'") == {"a": 1e5, "b": 1.5, "c": float("inf"), "d": "1e-3"}
    cfg = config_from_dict({"action": PHI4, "sampler": {"n_samples": parse_yaml("1e5")}})
    assert cfg.sampler.n_samples == 100000 and type(cfg.sampler.n_samples) is int
    with pytest.raises(ConfigError, match=r"sampler.n_samples must be an integer, got 1000.5"):
        config_from_dict({"action": PHI4, "sampler": {"n_samples": 1000.5}})


def test_duplicate_key_in_a_set_value_is_refused():
    with pytest.raises(ConfigError, match="--set action: duplicate key 'beta'"):
        apply_overrides({}, ["action={theory: u1, beta: 1.0, beta: 2.0}"])


def test_duplicate_key_after_a_merge_key_is_an_override_not_a_duplicate():
    from latticeflow.config_yaml import parse_yaml

    assert parse_yaml("base: &b {x: 1}\nderived:\n  <<: *b\n  x: 2\n")["derived"] == {"x": 2}


def test_threads_key_defaults_to_null_and_round_trips(tmp_path):
    cfg = config_from_dict({"action": PHI4, "threads": 3})
    assert cfg.threads == 3 and config_from_dict({"action": PHI4}).threads is None
    path = tmp_path / "c.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path)[0].threads == 3


@pytest.mark.parametrize("name", ["phi4_8x8", "run 2", "β=6"])
def test_plain_names_are_accepted(name):
    assert config_from_dict({"action": PHI4, "name": name}).output_dir.name == name
