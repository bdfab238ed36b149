import json
import math

import numpy as np
import pytest

from elasticrec.evaluate.metrics import metrics_from_ranks
from elasticrec.evaluate.significance import (RanksError, compare_by_length, compare_groups, compare_runs,
                                              compare_stages, format_length_table, format_stage_table, format_table,
                                              history_lengths, length_buckets, length_groups, load_ranks, paired_test,
                                              per_user, save_ranks, transition_groups)

META = {"dataset": "toy", "stage": "test", "protocol": "full", "exclude_history": True}


@pytest.mark.parametrize("metric", ["HR@1", "HR@10", "NDCG@5", "NDCG@10", "MRR"])
def test_per_user_values_average_to_the_metric(metric):
    ranks = np.random.default_rng(0).integers(0, 60, size=500)
    assert per_user(ranks, metric).mean() == pytest.approx(metrics_from_ranks(ranks, ks=(1, 5, 10))[metric])


@pytest.mark.parametrize("bad", ["NDCG", "HR@x", "MRR@10", "recall@10", "NDCG@0"])
def test_per_user_rejects_unknown_metrics(bad):
    with pytest.raises(ValueError, match="unknown metric"):
        per_user(np.zeros(3), bad)


def test_identical_runs_differ_by_nothing():
    x = np.random.default_rng(1).random(300)
    r = paired_test(x, x)
    assert r.diff == 0 and r.ci_low == 0 and r.ci_high == 0 and r.p_value == 1.0
    assert r.a_better == r.b_better == 0


def test_a_real_gain_is_detected_and_its_interval_covers_it():
    rng = np.random.default_rng(2)
    xa = rng.random(2000)
    xb = xa + 0.05 + rng.normal(0, 0.2, size=2000)  # true gain 0.05, noisy per user
    r = paired_test(xa, xb, "m", n_resamples=4000)
    assert r.ci_low < 0.05 < r.ci_high and r.ci_low > 0
    assert r.p_value < 1e-3 and r.b_better > r.a_better
    # the interval width matches the standard error of the paired mean
    se = (xb - xa).std(ddof=1) / math.sqrt(2000)
    assert (r.ci_high - r.ci_low) == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_pairing_is_what_makes_a_small_gain_visible():
    """A uniform +0.01 on values spread over [0, 1] is invisible to unpaired noise but certain
    once users are paired; and a pure-noise difference gets a large p-value."""
    rng = np.random.default_rng(3)
    xa = rng.random(1000)
    assert paired_test(xa, xa + 0.01, n_resamples=2000).p_value < 1e-3
    noise = paired_test(xa, xa + rng.normal(0, 0.1, 1000), n_resamples=2000)
    assert noise.p_value > 0.05 and noise.ci_low < 0 < noise.ci_high


def test_randomization_p_value_agrees_with_the_normal_approximation():
    rng = np.random.default_rng(4)
    xa = rng.random(3000)
    xb = xa + 0.004 + rng.normal(0, 0.1, 3000)
    d = xb - xa
    z = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    p_normal = math.erfc(abs(z) / math.sqrt(2))
    assert paired_test(xa, xb, n_resamples=20_000).p_value == pytest.approx(p_normal, abs=0.02)


def test_paired_test_is_seeded():
    rng = np.random.default_rng(5)
    xa, xb = rng.random(400), rng.random(400)
    assert paired_test(xa, xb, seed=7) == paired_test(xa, xb, seed=7)


def test_paired_test_rejects_unpaired_input():
    with pytest.raises(ValueError, match="same users"):
        paired_test(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="same users"):
        paired_test(np.zeros(0), np.zeros(0))


def test_ranks_file_round_trip_sorts_by_user(tmp_path):
    p = tmp_path / "r.npz"
    save_ranks(p, np.array([5, 1, 3]), np.array([50, 10, 30]), META)
    users, ranks, meta = load_ranks(p)
    assert users.tolist() == [1, 3, 5] and ranks.tolist() == [10, 30, 50]
    assert meta["dataset"] == "toy" and meta["source"] == str(p)
    assert [x.name for x in tmp_path.iterdir()] == ["r.npz"]  # atomic write leaves no temp file


def test_compare_runs_end_to_end(tmp_path):
    rng = np.random.default_rng(6)
    users = np.arange(800)
    ra = rng.integers(0, 100, size=800)
    rb = np.maximum(ra - rng.integers(0, 4, size=800), 0)  # B ranks every target at least as high
    for name, r in (("a", ra), ("b", rb)):
        (tmp_path / name).mkdir()
        save_ranks(tmp_path / name / "test_ranks.npz", users[::-1].copy(), r[::-1].copy(), META)
    results, ma, mb = compare_runs(tmp_path / "a", tmp_path / "b", n_resamples=2000)
    assert [r.metric for r in results] == ["HR@10", "NDCG@10", "MRR"]
    mrr = results[2]
    assert mrr.a == pytest.approx(per_user(ra, "MRR").mean()) and mrr.b == pytest.approx(per_user(rb, "MRR").mean())
    assert mrr.diff > 0 and mrr.ci_low > 0 and mrr.p_value < 1e-3 and mrr.a_better == 0
    table = format_table(results, "a", "b")
    assert "| MRR |" in table and "800 users paired" in table
    assert json.dumps([r.to_dict() for r in results])  # JSON-able


def test_several_runs_per_side_are_averaged_per_user(tmp_path):
    """Seeds of a setting: each user's value is the mean over that side's runs; every run is
    checked against the first (a run on other users is refused)."""
    rng = np.random.default_rng(8)
    users = np.arange(500)
    ranks = {name: rng.integers(0, 60, size=500) for name in ("a1", "a2", "a3", "b1", "b2")}
    for name, r in ranks.items():
        save_ranks(tmp_path / f"{name}.npz", users, r, META)
    side = lambda names: [tmp_path / f"{n}.npz" for n in names]
    results, ma, _ = compare_runs(side(["a1", "a2", "a3"]), side(["b1", "b2"]), metrics=("NDCG@10",), n_resamples=500)
    want_a = np.mean([per_user(ranks[n], "NDCG@10") for n in ("a1", "a2", "a3")], axis=0)
    want_b = np.mean([per_user(ranks[n], "NDCG@10") for n in ("b1", "b2")], axis=0)
    assert results[0].a == pytest.approx(want_a.mean()) and results[0].b == pytest.approx(want_b.mean())
    assert results[0].b_better == int((want_b > want_a).sum()) and ma["source"].endswith("a1.npz")
    single, _, _ = compare_runs(tmp_path / "a1.npz", [tmp_path / "b1.npz"], metrics=("NDCG@10",), n_resamples=500)
    assert single[0].a == pytest.approx(per_user(ranks["a1"], "NDCG@10").mean())
    save_ranks(tmp_path / "other.npz", users + 1, ranks["a1"], META)
    with pytest.raises(RanksError, match="different users"):
        compare_runs(side(["a1", "other"]), side(["b1"]))
    with pytest.raises(RanksError, match="at least one run on each side"):
        compare_runs([], side(["b1"]))


def test_compare_refuses_meaningless_pairings(tmp_path):
    save_ranks(tmp_path / "a.npz", np.arange(10), np.zeros(10), META)
    save_ranks(tmp_path / "b.npz", np.arange(10), np.zeros(10), {**META, "protocol": "SAMPLED-100-pop"})
    save_ranks(tmp_path / "c.npz", np.arange(1, 11), np.zeros(10), META)
    with pytest.raises(RanksError, match="differ in protocol"):
        compare_runs(tmp_path / "a.npz", tmp_path / "b.npz")
    with pytest.raises(RanksError, match=r"different users \(1 only in A, 1 only in B\)"):
        compare_runs(tmp_path / "a.npz", tmp_path / "c.npz")


def test_missing_or_corrupt_ranks_are_clear_errors(tmp_path):
    (tmp_path / "old-run").mkdir()
    with pytest.raises(RanksError, match=r"old-run.*test_ranks.npz.*elasticrec evaluate --run .*--save-ranks"):
        load_ranks(tmp_path / "old-run")
    with pytest.raises(RanksError, match="no such run directory or ranks file"):
        load_ranks(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(RanksError, match=r"bad.npz: not a ranks file"):
        load_ranks(tmp_path / "bad.npz")
    np.savez(tmp_path / "dup.npz", users=np.array([1, 1]), ranks=np.array([0, 2]), meta=np.array("{}"))
    with pytest.raises(RanksError, match="one rank per user"):
        load_ranks(tmp_path / "dup.npz")


def test_length_buckets_partition_the_lengths():
    assert length_buckets([16, 50]) == [(0, 16), (16, 50), (50, None)]
    for bad in ([], [0, 5], [50, 16], [16, 16]):
        with pytest.raises(ValueError, match="increasing positive"):
            length_buckets(bad)


def test_compare_by_length_finds_a_gain_where_it_is():
    """B is better only for users with long histories: the long bucket shows it, the short does
    not, and the buckets' users add up to everyone."""
    rng = np.random.default_rng(3)
    n = 3000
    hist = rng.integers(1, 200, size=n)
    ra = rng.integers(0, 50, size=n)
    rb = np.where(hist >= 100, np.maximum(ra - 5, 0), ra)
    rows = compare_by_length(ra, rb, hist, [100], metrics=("NDCG@10", "MRR"), n_resamples=1000)
    assert [(label, r.metric) for label, r in rows] == [("0-99", "NDCG@10"), ("0-99", "MRR"),
                                                        (">=100", "NDCG@10"), (">=100", "MRR")]
    short, long_ = rows[1][1], rows[3][1]
    assert short.diff == 0 and short.p_value == 1.0
    assert long_.diff > 0 and long_.ci_low > 0 and long_.p_value < 1e-2
    assert short.n_users + long_.n_users == n and long_.n_users == int((hist >= 100).sum())
    assert long_.b == pytest.approx(per_user(rb[hist >= 100], "MRR").mean())
    assert compare_by_length(ra, rb, hist, [500], metrics=("MRR",))[0][0] == "0-499"  # empty bucket left out
    assert "| >=100 | " in format_length_table(rows)
    with pytest.raises(ValueError, match="same users"):
        compare_by_length(ra, rb, hist[:-1], [100])


def test_transition_groups_split_each_group_and_compare_inside_it():
    """B gains only where the step to the target was seen in training: the 'seen step' groups show
    it, the 'new step' ones do not, inside every length bucket given."""
    rng = np.random.default_rng(4)
    n = 2000
    hist, seen = rng.integers(1, 100, size=n), rng.random(n) < 0.3
    ra = rng.integers(0, 50, size=n)
    rb = np.where(seen, np.maximum(ra - 5, 0), ra)
    groups = transition_groups(seen, length_groups(hist, [50]))
    assert [label for label, _ in groups] == ["0-49, seen step", "0-49, new step", ">=50, seen step", ">=50, new step"]
    assert sum(int(m.sum()) for _, m in groups) == n
    rows = compare_groups(ra, rb, groups, metrics=("MRR",), n_resamples=500)
    by = {label: r for label, r in rows}
    assert by["0-49, new step"].diff == 0 and by[">=50, new step"].diff == 0
    assert by["0-49, seen step"].p_value < 0.01 and by[">=50, seen step"].ci_low > 0
    assert [label for label, _ in transition_groups(seen)] == ["all, seen step", "all, new step"]
    with pytest.raises(ValueError, match="same users"):
        compare_groups(ra, rb[:-1], groups)


def test_history_lengths_need_the_run_config(tmp_path):
    save_ranks(tmp_path / "r.npz", np.arange(3), np.zeros(3), META)
    with pytest.raises(RanksError, match=r"config.yaml: not found.*run directory"):
        history_lengths(tmp_path / "r.npz", META)


def test_compare_stages_tests_whether_validation_predicts_test(tmp_path):
    """B gains on the validation item only: the valid - test difference is found and is the
    difference of the two per-stage gaps; equal gains at both stages give no difference. Users
    ranked at one stage only are left out."""
    rng = np.random.default_rng(11)
    n = 600
    base = {st: rng.integers(0, 40, size=n) for st in ("valid", "test")}
    gain = {"valid": np.maximum(base["valid"] - rng.integers(0, 6, size=n), 0), "test": base["test"]}
    for name, ranks in (("a", base), ("b", gain), ("c", {st: np.maximum(r - 3, 0) for st, r in base.items()})):
        (tmp_path / name).mkdir()
        for st, r in ranks.items():
            users = np.arange(n) if st == "test" else np.arange(1, n + 1)   # user 0 test only, n valid only
            save_ranks(tmp_path / name / f"{st}_ranks.npz", users, r, {**META, "stage": st})
    res = compare_stages(tmp_path / "a", tmp_path / "b", metrics=("MRR", "NDCG@10"), n_resamples=2000)
    mrr = res[0]
    want_v = (per_user(gain["valid"], "MRR") - per_user(base["valid"], "MRR"))[:-1]
    assert mrr.n_users == n - 1 and mrr.b == pytest.approx(want_v.mean()) and mrr.a == pytest.approx(0.0)
    assert mrr.diff == pytest.approx(mrr.b - mrr.a) and mrr.ci_low > 0 and mrr.p_value < 1e-3
    same = compare_stages(tmp_path / "a", tmp_path / "c", metrics=("MRR",), n_resamples=500)[0]
    assert same.a > 0 and same.b > 0 and abs(same.diff) < abs(same.a)
    table = format_stage_table(res)
    assert "| MRR | 599 |" in table and "| valid - test |" in table
    (tmp_path / "b" / "valid_ranks.npz").unlink()
    with pytest.raises(RanksError, match="valid_ranks.npz"):
        compare_stages(tmp_path / "a", tmp_path / "b")


def test_length_groups_label_and_mask_every_user_once():
    hist = np.array([0, 3, 16, 49, 50, 200])
    groups = length_groups(hist, [16, 50])
    assert [g for g, _ in groups] == ["0-15", "16-49", ">=50"]
    assert np.array_equal(np.stack([m for _, m in groups]).sum(0), np.ones(len(hist)))
    assert [hist[m].tolist() for _, m in groups] == [[0, 3], [16, 49], [50, 200]]
    assert not length_groups(hist, [500])[1][1].any()
