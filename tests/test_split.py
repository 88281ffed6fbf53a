import numpy as np
import pandas as pd
import pytest

from bench.config import load_config
from bench.errors import BenchError
from bench.split import build_split


def _cfg(fixtures_dir, cache, *extra):
    return load_config("smoke", overrides=[{"data": {"dataset": "ml-slice", "data_dir": str(fixtures_dir),
                                                     "max_users": None}, "cache_dir": str(cache)}, *extra])


@pytest.fixture(scope="module")
def split(fixtures_dir, tmp_path_factory):
    return build_split(_cfg(fixtures_dir, tmp_path_factory.mktemp("c")), tmp_path_factory.mktemp("c"))


def _chronological(fixtures_dir):
    frame = pd.read_csv(fixtures_dir / "ml-slice" / "ml-slice.inter", sep="\t", dtype=str)
    frame.columns = ["user", "item", "rating", "time"]
    frame["time"] = frame["time"].astype(float)
    return frame.iloc[np.lexsort((frame["time"].to_numpy(), frame["user"].to_numpy()))]


def test_leave_one_out_in_time_order(split, fixtures_dir):
    item_index = {token: i for i, token in enumerate(split.item_ids)}
    for user in split.users:
        rows = _chronological(fixtures_dir)
        seq = rows[rows["user"] == split.user_ids[user]]["item"].map(item_index).to_numpy()
        assert np.array_equal(split.train_history(user), seq[:-2])
        assert split.valid_target[user] == seq[-2] and split.test_target[user] == seq[-1]


def test_no_validation_or_test_item_in_training_histories(split):
    for user in split.users:
        train = set(split.train_history(user).tolist())
        assert split.valid_target[user] not in train and split.test_target[user] not in train
        assert split.test_target[user] not in split.history(user, "test")
        assert split.valid_target[user] not in split.history(user, "valid")
        assert split.history(user, "test")[-1] == split.valid_target[user]


def test_popularity_counts_training_interactions_only(split):
    assert np.array_equal(split.popularity, np.bincount(split.train_items, minlength=split.n_items))
    assert split.popularity[0] == 0 and split.titles[0] is None


def test_deterministic_and_keyed_by_data_config(fixtures_dir, tmp_path, split):
    again = build_split(_cfg(fixtures_dir, tmp_path), tmp_path / "fresh")
    assert again.hash == split.hash and again is not split
    sampled = build_split(_cfg(fixtures_dir, tmp_path, "data.max_users=20"), tmp_path / "fresh")
    assert sampled.hash != split.hash and sampled.stats["users"] == 20


def test_corrupt_cache_is_detected_and_rebuilt(fixtures_dir, tmp_path):
    cfg = _cfg(fixtures_dir, tmp_path)
    first = build_split(cfg, tmp_path)
    npz = next(tmp_path.glob("splits/*/split.npz"))
    npz.write_bytes(npz.read_bytes()[:-10])
    with pytest.warns(UserWarning, match="corrupt"):
        rebuilt = build_split(cfg, tmp_path)
    assert rebuilt.hash == first.hash


def test_empty_after_filtering_is_a_clear_error(fixtures_dir, tmp_path):
    with pytest.raises(BenchError, match="empty after filtering.*lower those thresholds"):
        build_split(_cfg(fixtures_dir, tmp_path, "data.min_user_inter=100000"), tmp_path)


def test_canary_test_items_never_reach_training_data(fixtures_dir, tmp_path):
    """Replace every user's last interaction by an item seen nowhere else: it must not count anywhere."""
    frame = _chronological(fixtures_dir)
    last = ~frame["user"].duplicated(keep="last")
    frame.loc[last, "item"] = "CANARY"
    folder = tmp_path / "canary"
    folder.mkdir()
    frame[["user", "item", "time"]].to_csv(folder / "canary.inter", sep="\t", index=False,
                                           header=["user_id:token", "item_id:token", "timestamp:float"])
    cfg = load_config("smoke", overrides=[{"data": {"dataset": "canary", "data_dir": str(tmp_path),
                                                    "max_users": None}}])
    split = build_split(cfg, tmp_path / "cache")
    canary = list(split.item_ids).index("CANARY")
    assert split.popularity[canary] == 0
    assert canary not in split.train_items and canary not in split.valid_target
    assert (split.test_target[1:] == canary).all()


def _short_users_data(root):
    """60 users with 1-5 interactions each (12 of every length) over 40 items, timestamps in order."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(60):
        items = rng.choice(40, size=1 + user % 5, replace=False)
        rows += [(f"u{user}", f"i{item}", t) for t, item in enumerate(items)]
    (root / "short").mkdir()
    pd.DataFrame(rows).to_csv(root / "short" / "short.inter", sep="\t", index=False,
                              header=["user_id:token", "item_id:token", "timestamp:float"])
    return pd.DataFrame(rows, columns=["user", "item", "time"])


def test_short_users_get_real_validation_and_test_items(tmp_path):
    """Users with 1-5 interactions: every user kept has real validation and test targets, a training history of
    the rest, and no padding item anywhere (RecBole gives a user with 3 interactions no validation row)."""
    rows = _short_users_data(tmp_path)
    cfg = load_config("smoke", overrides=[{"data": {"dataset": "short", "data_dir": str(tmp_path),
                                                    "max_users": None}}])
    split = build_split(cfg, tmp_path / "cache")
    assert (split.valid_target[1:] > 0).all() and (split.test_target[1:] > 0).all()
    assert 0 not in split.train_items
    item_index = {token: i for i, token in enumerate(split.item_ids)}
    for user in split.users:
        seq = rows[rows["user"] == split.user_ids[user]]["item"].map(item_index).to_numpy()
        assert len(seq) >= cfg["data.min_user_inter"]
        assert np.array_equal(split.history(user, "test"), seq[:-1]) and split.test_target[user] == seq[-1]
        assert 0 not in split.history(user, "test")
    assert split.stats["interactions"] == sum(rows["user"].map(rows["user"].value_counts()) >= 4)


def test_a_minimum_below_what_leave_one_out_needs_is_a_one_line_error():
    with pytest.raises(BenchError, match=r"'data.min_user_inter' must be >= 4, got 3") as err:
        load_config("default", overrides=["data.min_user_inter=3"])
    assert "\n" not in str(err.value)


def test_a_split_that_would_hold_the_padding_item_is_refused(tmp_path):
    """Built past the config check (a saved config from before the minimum rose), the split refuses users that
    RecBole left without a validation item instead of giving them item 0."""
    _short_users_data(tmp_path)
    cfg = load_config("smoke", overrides=[{"data": {"dataset": "short", "data_dir": str(tmp_path), "max_users": None,
                                                    "min_user_inter": 3}}], check_values=False)
    with pytest.raises(BenchError, match=r"no validation or test item.*data.min_user_inter >= 4"):
        build_split(cfg, tmp_path / "cache")
