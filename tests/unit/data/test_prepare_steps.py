"""Each preparation step on tiny hand-made frames: the rule, its count in the quarantine, the exact output."""

import numpy as np
import pandas as pd
import pytest

from data_modules.errors import DataError, Quarantine
from data_modules.prepare.clean import clean_interactions
from data_modules.prepare.config import CleanConfig, FilterConfig, SplitConfig
from data_modules.prepare.filter import filter_interactions
from data_modules.prepare.split import TEST, TRAIN, VALID, recbole_split_counts, split_interactions

pytestmark = pytest.mark.unit


def frame(rows):
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


def test_exact_duplicates_and_conflicting_ratings_are_counted():
    inter = frame([("u1", "i1", 5, 10), ("u1", "i1", 5, 10), ("u1", "i1", 2, 20), ("u2", "i1", 3, 5)])
    q = Quarantine()
    out = clean_interactions(inter, CleanConfig(duplicate_rule="last"), q, "x.csv")
    assert q.counts == {"exact_duplicate": 1, "duplicate_pair": 1}
    assert sorted(map(tuple, out[["user", "item", "rating"]].to_numpy().tolist())) == [("u1", "i1", 2.0), ("u2", "i1", 3.0)]


@pytest.mark.parametrize("rule,expected", [("first", 5.0), ("last", 2.0), ("mean", 3.5), ("max", 5.0)])
def test_duplicate_rules(rule, expected):
    inter = frame([("u1", "i1", 5, 10), ("u1", "i1", 2, 20)])
    out = clean_interactions(inter, CleanConfig(duplicate_rule=rule), Quarantine(), "x")
    assert out["rating"].tolist() == [expected]


def test_out_of_range_and_non_numeric_ratings_are_quarantined_with_row_numbers():
    inter = frame([("u1", "i1", "5", 1), ("u1", "i2", "abc", 2), ("u2", "i1", "0", 3)])
    q = Quarantine()
    out = clean_interactions(inter, CleanConfig(rating_range=(1, 5)), q, "r.tsv")
    assert q.counts == {"non_numeric_rating": 1, "rating_out_of_range": 1}
    assert {s["rule"]: s["row"] for s in q.samples} == {"non_numeric_rating": 2, "rating_out_of_range": 3}
    assert all(s["file"] == "r.tsv" for s in q.samples)
    assert out["rating"].tolist() == [5.0]


def test_too_many_bad_rows_is_a_clear_error():
    q = Quarantine()
    for i in range(3):
        q.reject("bad_json", path="a.json", row=i + 1, reason="truncated")
    with pytest.raises(DataError, match=r"3 of 10 rows rejected.*max_bad_fraction=0.1.*a\.json"):
        q.check(10, 0.1, "a.json")


def test_kcore_iterates_until_stable():
    # u3 has 1 interaction -> removed; then i3 drops to 1 -> removed; then u2 drops to 1 -> removed
    inter = frame([("u1", "i1", 1, 0), ("u1", "i2", 1, 0), ("u2", "i1", 1, 0), ("u2", "i3", 1, 0), ("u3", "i3", 1, 0),
                   ("u4", "i1", 1, 0), ("u4", "i2", 1, 0)])
    q = Quarantine()
    out = filter_interactions(inter, FilterConfig(min_user_interactions=2, min_item_interactions=2), q, "x")
    assert sorted(zip(out["user"], out["item"])) == [("u1", "i1"), ("u1", "i2"), ("u4", "i1"), ("u4", "i2")]
    assert q.counts["k_core"] == 3


def test_empty_after_filtering_is_an_error():
    inter = frame([("u1", "i1", 1, 0)])
    with pytest.raises(DataError, match="no interactions left after filtering"):
        filter_interactions(inter, FilterConfig(rating_threshold=4), Quarantine(), "x.csv")


def test_recbole_rounding_matches_its_rule():
    assert recbole_split_counts(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
    assert recbole_split_counts(20, (0.8, 0.1, 0.1)) == [16, 2, 2]
    assert recbole_split_counts(5, (0.8, 0.1, 0.1)) == [3, 1, 1]  # 0.5 rounds up to one each
    assert recbole_split_counts(2, (0.8, 0.1, 0.1)) == [1, 0, 1]  # test is topped up first, then train is at 1


def dense(n_users=4, per_user=10, seed=0):
    rng = np.random.default_rng(seed)
    rows = [(u, int(i), float(rng.integers(1, 6)), int(t)) for u in range(n_users)
            for t, i in enumerate(rng.choice(50, per_user, replace=False))]
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


def test_recbole_protocol_per_user_shares_and_determinism():
    inter = dense()
    a = split_interactions(inter, SplitConfig(protocol="recbole", seed=2020))
    b = split_interactions(inter, SplitConfig(protocol="recbole", seed=2020))
    c = split_interactions(inter, SplitConfig(protocol="recbole", seed=1))
    assert (a == b).all() and not (a == c).all()
    for u in range(4):
        assert np.bincount(a[inter["user"] == u], minlength=3).tolist() == [8, 1, 1]


def test_leave_one_out_takes_last_two_in_time():
    inter = dense(n_users=2, per_user=5)
    part = split_interactions(inter, SplitConfig(protocol="leave_one_out"))
    for u in range(2):
        ts = inter["timestamp"][inter["user"] == u].to_numpy()
        p = part[inter["user"] == u]
        assert p[ts.argmax()] == TEST
        assert p[np.argsort(ts)[-2]] == VALID
        assert (p == TRAIN).sum() == 3


def test_temporal_cut_is_global():
    inter = dense(n_users=3, per_user=10)
    part = split_interactions(inter, SplitConfig(protocol="temporal", ratios=(0.6, 0.2, 0.2)))
    ts = inter["timestamp"].to_numpy()
    assert ts[part == TRAIN].max() <= ts[part == VALID].min() <= ts[part == TEST].min()


def test_cold_item_split_has_no_training_interactions_for_held_out_items():
    inter = dense(n_users=20, per_user=10)
    part = split_interactions(inter, SplitConfig(protocol="cold_item", seed=3))
    train_items = set(inter["item"][part == TRAIN])
    held = set(inter["item"][part != TRAIN])
    assert held and not (train_items & held)


def test_cold_user_split_holds_out_whole_users():
    inter = dense(n_users=40, per_user=10)
    part = split_interactions(inter, SplitConfig(protocol="cold_user", ratios=(0.8, 0.1, 0.1), seed=3))
    users = inter["user"].to_numpy()
    train_users = set(users[part == TRAIN])
    valid_users, test_users = set(users[part == VALID]), set(users[part == TEST])
    # no held-out user trains; each is wholly valid or wholly test (nothing to condition on at evaluation)
    assert not train_users & (valid_users | test_users) and not valid_users & test_users
    assert (len(train_users), len(valid_users), len(test_users)) == (32, 4, 4)  # shares of users
    # every interaction is in exactly one split: counts are conserved
    assert len(part) == len(inter) and np.bincount(part, minlength=3).tolist() == [320, 40, 40]
    for u in valid_users | test_users:
        assert len(set(part[users == u])) == 1


def test_cold_user_split_is_deterministic_by_seed():
    inter = dense(n_users=40, per_user=10)
    a = split_interactions(inter, SplitConfig(protocol="cold_user", seed=3))
    b = split_interactions(inter, SplitConfig(protocol="cold_user", seed=3))
    c = split_interactions(inter, SplitConfig(protocol="cold_user", seed=4))
    assert (a == b).all() and not (a == c).all()


def test_cold_user_split_must_leave_training_users():
    with pytest.raises(DataError, match="cold_user split leaves no training users"):
        split_interactions(dense(n_users=2, per_user=3), SplitConfig(protocol="cold_user", ratios=(0.0, 0.5, 0.5)))


def test_presplit_requires_known_values():
    inter = dense(n_users=1, per_user=3).assign(split=["train", "valid", "bogus"])
    with pytest.raises(DataError, match=r"row 3.*'bogus'"):
        split_interactions(inter, SplitConfig(protocol="presplit"))
