import json

import numpy as np
import pytest
import torch

from elasticrec.cli import main
from elasticrec.serving import (
    MAX_K, Recommender, RunLoadError, ServingError, UnknownItemError, UnknownUserError, load_run)
from serving_helpers import MAX_LEN, N_ITEMS, N_USERS, cycle_next, item_raw


def walk(start: int, step: int, n: int) -> list[str]:
    out, i = [], start
    for _ in range(n):
        out.append(item_raw(i))
        i = cycle_next(i, step)
    return out


def test_load_run_builds_eval_mode_model_and_maps(rec):
    assert not rec.model.training
    assert rec.n_items == N_ITEMS and rec.max_len == MAX_LEN
    assert set(rec.item_index) == {item_raw(i) for i in range(1, N_ITEMS + 1)}
    assert rec.item_raw[0] == "<pad>"
    assert rec.popularity[0] == float("-inf") and (rec.popularity[1:] >= 0).all()


def test_recommend_returns_raw_ids_excludes_history_and_learned_the_cycle(rec):
    hits = 0
    for start in range(1, N_ITEMS + 1, 3):
        hist = walk(start, 1, 6)
        r, = rec.recommend([hist], k=10)
        assert len(r.items) == 10 and all(i in rec.item_index for i in r.item_ids)
        assert not set(r.item_ids) & set(hist), "history items must be excluded"
        assert [s for _, s in r.items] == sorted((s for _, s in r.items), reverse=True)
        nxt = item_raw(cycle_next(int(hist[-1][1:]) - 100, 1))
        hits += nxt in r.item_ids
        assert r.fallback is None and r.truncated == 0 and r.skipped_unknown == []
    assert hits >= 7, f"trained model finds the next cyclic item in only {hits}/10 cases"


def test_keep_history_allows_history_items(rec):
    hist = walk(5, 1, 6)
    keep, = rec.recommend([hist], k=N_ITEMS, exclude_history=False)
    excl, = rec.recommend([hist], k=N_ITEMS)
    assert len(keep.items) == N_ITEMS and set(hist) <= set(keep.item_ids)
    assert len(excl.items) == N_ITEMS - len(set(hist))  # fewer candidates than k: all of them


def test_batched_equals_one_by_one(rec):
    hists = [walk(3, 1, 4), walk(10, 2, 9), walk(1, 1, 20), ["m999"], walk(7, 2, 1)]
    batched = rec.recommend(hists, k=7)
    for h, b in zip(hists, batched):
        single, = rec.recommend([h], k=7)
        assert single.item_ids == b.item_ids
        np.testing.assert_allclose([s for _, s in single.items], [s for _, s in b.items], rtol=1e-4, atol=1e-5)
        assert (single.truncated, single.skipped_unknown, single.fallback) == (b.truncated, b.skipped_unknown, b.fallback)


def test_int_and_str_ids_match_on_string_form(tmp_path, rec):
    # a recommender whose raw ids look numeric
    data = rec.data
    numeric = type(data)(items=data.items, offsets=data.offsets, n_items=data.n_items,
                         item_raw_ids=np.array(["<pad>"] + [str(100 + i) for i in range(1, N_ITEMS + 1)]),
                         user_raw_ids=data.user_raw_ids)
    r2 = Recommender(rec.model, numeric)
    a, = r2.recommend([[101, 102, 103]], k=5)
    b, = r2.recommend([["101", "102", "103"]], k=5)
    assert a.item_ids == b.item_ids and a.history_len == 3
    with pytest.raises(ServingError, match="integers or strings"):
        r2.recommend([[101.0]], k=5)
    assert len(r2.user_index) == N_USERS


def test_unknown_items_skip_or_error(rec):
    r, = rec.recommend([["m101", "nope", "m102", 42]], k=5)
    assert r.skipped_unknown == ["nope", "42"] and r.history_len == 2
    with pytest.raises(UnknownItemError, match="2 unknown item id\\(s\\).*'nope'"):
        rec.recommend([["m101", "nope", 42]], k=5, unknown="error")
    with pytest.raises(ServingError, match="unknown="):
        rec.recommend([["m101"]], k=5, unknown="ignore")


def test_empty_history_falls_back_to_popularity(rec):
    r, = rec.recommend([[]], k=5)
    assert r.fallback == "popularity" and r.history_len == 0
    pop = rec.popularity[1:].numpy()
    top = [item_raw_of(rec, i) for i in np.argsort(-pop, kind="stable")[:5] + 1]
    assert sorted(s for _, s in r.items)[::-1] == sorted(pop, reverse=True)[:5]
    assert set(r.item_ids) <= set(top) | {i for i, s in r.items if s == r.items[-1][1]}
    only_unknown, = rec.recommend([["zzz"]], k=3)
    assert only_unknown.fallback == "popularity" and only_unknown.skipped_unknown == ["zzz"]


def item_raw_of(rec, i):
    return rec.item_raw[int(i)]


def test_long_history_truncated_and_reported(rec):
    hist = walk(1, 1, MAX_LEN + 9)
    r, = rec.recommend([hist], k=5)
    assert (r.history_len, r.used_len, r.truncated) == (MAX_LEN + 9, MAX_LEN, 9)
    # the model reads the most recent max_len items: same scores as the tail alone, but the
    # whole history is excluded
    tail, = rec.recommend([hist[-MAX_LEN:]], k=N_ITEMS, exclude_history=False)
    full, = rec.recommend([hist], k=N_ITEMS, exclude_history=False)
    assert tail.items == full.items
    assert not set(r.item_ids) & set(hist)


@pytest.mark.parametrize("k", [0, -1, N_ITEMS + 1, MAX_K + 1, 2.5, True])
def test_bad_k_is_rejected(rec, k):
    with pytest.raises(ServingError, match="k"):
        rec.recommend([["m101"]], k=k)


def test_recommend_user_uses_full_dataset_history(rec):
    u = rec.user_index["u3"]
    full = [rec.item_raw[i] for i in rec.data.sequence(u)]
    r = rec.recommend_user("u3", k=5)
    ref, = rec.recommend([full], k=5)
    assert r.item_ids == ref.item_ids and r.history_len == len(full)
    with pytest.raises(UnknownUserError, match="unknown user 'nobody'"):
        rec.recommend_user("nobody")


def test_load_run_errors(tmp_path, run_dir):
    with pytest.raises(RunLoadError, match="not a run directory"):
        load_run(tmp_path)
    with pytest.raises(RunLoadError, match="best or last"):
        load_run(run_dir, checkpoint="middle")
    last = load_run(run_dir, checkpoint="last")
    assert last.n_items == N_ITEMS


# ---------------------------------------------------------------------------------------- CLI
def test_cli_recommend_history_json(run_dir, capsys):
    assert main(["recommend", "--run", str(run_dir), "--history", "m101,m102,bogus", "--k", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["items"]) == 4 and out["skipped_unknown"] == ["bogus"]
    assert not {"m101", "m102"} & {d["item"] for d in out["items"]}


def test_cli_recommend_user_table(run_dir, rec, capsys):
    assert main(["recommend", "--run", str(run_dir), "--user", "u5", "--k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ["rank", "item"] and len(lines) == 4
    assert [ln.split()[1] for ln in lines[1:]] == rec.recommend_user("u5", 3).item_ids


def test_cli_keep_history(run_dir, capsys):
    assert main(["recommend", "--run", str(run_dir), "--history", "m101", "--k", str(N_ITEMS),
                 "--keep-history", "--json"]) == 0
    assert "m101" in {d["item"] for d in json.loads(capsys.readouterr().out)["items"]}


@pytest.mark.parametrize("args,msg", [
    (["--user", "ghost"], "unknown user 'ghost'"),
    (["--history", "x,y"], "no valid items"),
    (["--history", "m101,x", "--unknown", "error"], "unknown item"),
    (["--history", "m101", "--k", "31"], "out of range"),
    (["--history", " , "], "--history is empty"),
])
def test_cli_recommend_errors(run_dir, capsys, args, msg):
    assert main(["recommend", "--run", str(run_dir), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("elasticrec: error:") and msg in err and "Traceback" not in err


def test_cli_bad_k_and_bad_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["recommend", "--run", str(tmp_path), "--history", "1", "--k", "0"])
    assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err
    assert main(["recommend", "--run", str(tmp_path), "--history", "1"]) == 1
    assert "not a run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["recommend", "--run", str(tmp_path)])  # neither --history nor --user


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is absent")
def test_cli_cuda_without_gpu_is_a_clear_error(run_dir, capsys):
    assert main(["recommend", "--run", str(run_dir), "--history", "m101", "--device", "cuda"]) == 1
    assert "CUDA is not available" in capsys.readouterr().err
