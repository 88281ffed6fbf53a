import pytest

from bench.config import load_config, parse_override, presets, ranges
from bench.errors import BenchError


def test_merge_order_defaults_preset_file_then_set(tmp_path):
    base = load_config("default")
    assert base["encoder.epochs"] == 10
    smoke = load_config("smoke")
    assert smoke["encoder.epochs"] == 1 and smoke["data.max_users"] == 100
    cfg_file = tmp_path / "mine.yaml"
    cfg_file.write_text("encoder:\n  epochs: 3\ndata:\n  max_users: 50\n")
    merged = load_config("smoke", cfg_file, ["data.max_users=7"])
    assert merged["encoder.epochs"] == 3        # file beats preset
    assert merged["data.max_users"] == 7        # --set beats file
    assert merged["encoder.params.n_layers"] == 1  # preset kept where nothing overrides it


def test_unknown_key_gets_did_you_mean(tmp_path):
    with pytest.raises(BenchError, match=r"unknown config key 'data.max_user' \(did you mean 'data.max_users'\?\)"):
        load_config("default", overrides=["data.max_user=5"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("encoder:\n  epoch: 3\n")
    with pytest.raises(BenchError, match=r"bad.yaml: unknown config key 'encoder.epoch'.*encoder.epochs"):
        load_config("default", bad)


def test_wrong_type_and_bad_values_are_rejected():
    with pytest.raises(BenchError, match="expects int"):
        load_config("default", overrides=["encoder.epochs=many"])
    with pytest.raises(BenchError, match="min_user_inter"):
        load_config("default", overrides=["data.min_user_inter=2"])
    with pytest.raises(BenchError, match="unknown preset 'smok'.*did you mean 'smoke'"):
        load_config("smok")


def test_config_is_frozen_and_hash_is_stable():
    a = load_config("smoke", overrides=["seeds=[0, 1]"])
    b = load_config("smoke", overrides=[{"seeds": [0, 1]}])
    assert a.hash == b.hash and len(a.hash) == 12
    assert load_config("smoke").hash != a.hash
    with pytest.raises(TypeError):
        a.tree["seeds"] = [3]
    with pytest.raises(TypeError):
        a["data"]["max_users"] = 3


def test_open_sections_accept_new_keys():
    cfg = load_config("default", overrides=["encoder.params.embedding_size=32", "paradigms.pop.anything=1"])
    assert cfg["encoder.params.embedding_size"] == 32
    assert cfg["encoder.params.hidden_size"] == 64  # merged, not replaced


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("data:\n  max_users: [1, 2\n")
    with pytest.raises(BenchError, match=r"broken.yaml:\d+"):
        load_config("default", broken)


def test_override_parsing():
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    assert parse_override("a=[1, 2]") == {"a": [1, 2]}
    assert parse_override("a=null") == {"a": None}
    with pytest.raises(BenchError, match="KEY=VALUE"):
        parse_override("novalue")


def test_presets_are_listed():
    assert {"smoke", "default", "paper", "more-samples"} <= set(presets())


@pytest.mark.parametrize("override, message", [
    ("train.epochs=-1", r"'train.epochs' must be >= 0, got -1"),
    ("llm.token_budget=0", r"'llm.token_budget' must be >= 1, got 0"),
    ("report.alpha=1.0", r"'report.alpha' must be in \(0, 1\), got 1.0"),
    ("train.learning_rate=0.0", r"'train.learning_rate' must be > 0, got 0.0"),
    ("data.min_user_inter=3", r"'data.min_user_inter' must be >= 4, got 3"),
])
def test_values_out_of_their_documented_range_are_one_line_errors(override, message):
    with pytest.raises(BenchError, match=message) as err:
        load_config("default", overrides=[override])
    assert "\n" not in str(err.value) and "default.yaml" in str(err.value)


def test_range_edges_and_null_are_accepted():
    cfg = load_config("default", overrides=["train.epochs=0", "llm.token_budget=null", "report.alpha=0.5",
                                            "data.min_user_inter=4"])
    assert cfg["train.epochs"] == 0 and cfg["llm.token_budget"] is None


def test_every_numeric_key_documents_its_range():
    """A new numeric key must say its range next to its documentation (seeds may be any integer)."""
    cfg, documented = load_config("default"), ranges()
    numeric = [key for key in _leaves(cfg.to_dict())
               if isinstance(cfg[key], (int, float)) and not isinstance(cfg[key], bool) or cfg[key] is None]
    missing = [key for key in numeric if key not in documented and not key.endswith("seed")
               and key not in ("cache_dir", "data.data_dir")]
    assert missing == []


def _leaves(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("params", "paradigms"):
            out += _leaves(value, f"{prefix}{key}.")
        elif not isinstance(value, dict):
            out.append(f"{prefix}{key}")
    return out


def test_the_more_samples_preset_is_the_default_preset_with_more_samples():
    """It repeats the default preset's lines (presets do not include each other): they must not drift apart."""
    default, more = load_config("default").to_dict(), load_config("more-samples").to_dict()
    assert more["train"].pop("samples_per_user") == 100 and default["train"].pop("samples_per_user") == 5
    assert more == default
