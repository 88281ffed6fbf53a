"""Distributed runs: the same `bench run` under torchrun with 2 CPU processes (gloo) against 1 process.

What holds on the ml-100k slice (smoke preset with one training epoch, float32): the same users and *equal* ranks for pop, sasrec,
id-translation and ra-rec (training losses agree to ~1e-7, float summation order; no rank moved). The runs are
float32 because bfloat16 rounding depends on how rows are batched, and sharding batches them differently: there
the ranks agree up to rounding (one rank of 480 moved by one on this CPU). Caches built by one world size
are reused by the other; a rank that fails ends every process with a line naming it.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from bench.distributed import World

PARADIGMS = "pop,sasrec,id-translation,ra-rec"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_run(processes: int, out, cache, fixtures_dir, paradigms=PARADIGMS, env=None, timeout=600):
    """``bench run`` on the ml-100k slice, in one process or under torchrun with ``processes`` processes."""
    args = ["-m", "bench", "run", "--paradigms", paradigms, "--dataset", "ml-slice", "--data-dir",
            str(fixtures_dir), "--preset", "smoke", "--set", "llm.dtype=float32", "--set", "train.epochs=1", "--out", str(out), "--quiet"]
    if processes > 1:
        args = ["-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--master-addr", "127.0.0.1",
                "--master-port", str(free_port()), *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_CACHE": str(cache), **(env or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full_env, timeout=timeout)


def per_user(out) -> pd.DataFrame:
    return pd.read_csv(out / "per_user.csv", dtype={"user": str})


def manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def one_then_two(tmp_path_factory, fixtures_dir):
    """A 1-process run on a fresh cache, then a 2-process run reusing that cache."""
    root = tmp_path_factory.mktemp("dist")
    one = bench_run(1, root / "one", root / "cache", fixtures_dir)
    assert one.returncode == 0, one.stderr[-2000:]
    two = bench_run(2, root / "two", root / "cache", fixtures_dir)
    assert two.returncode == 0, two.stderr[-3000:]
    return root


def test_two_processes_rank_every_user_exactly_like_one(one_then_two):
    one, two = per_user(one_then_two / "one"), per_user(one_then_two / "two")
    keys = ["paradigm", "seed", "stage", "user"]
    assert not two.duplicated(keys).any()
    assert one[keys].equals(two[keys])
    assert sorted(two["paradigm"].unique()) == sorted(PARADIGMS.split(","))
    mismatched = one["rank"] != two["rank"]
    assert not mismatched.any(), one[mismatched].assign(rank_two=two["rank"][mismatched]).head()
    assert manifest(one_then_two / "two")["hardware"]["processes"] == 2
    assert manifest(one_then_two / "one")["hardware"]["processes"] == 1


def test_training_is_the_same_global_batch_on_two_processes(one_then_two):
    """The shared loop trains with the same batches, so the loss curve matches the one-process run."""
    for label in ("id-translation", "ra-rec"):
        curves = [manifest(one_then_two / name)["paradigms"][label]["seeds"]["0"]["training"]["history"]
                  for name in ("one", "two")]
        losses = [[epoch["loss"] for epoch in curve[1:]] for curve in curves]
        assert len(losses[0]) == len(losses[1]) > 0
        assert losses[0] == pytest.approx(losses[1], rel=1e-5), label


def test_a_cache_built_by_one_process_serves_two_and_back(one_then_two, fixtures_dir):
    # 1 -> 2: the 2-process run found every feature, split and encoder in the 1-process cache.
    two = manifest(one_then_two / "two")
    assert two["llm"]["forward_passes"] == 0
    assert two["split_hash"] == manifest(one_then_two / "one")["split_hash"]
    assert two["encoder"]["key"] == manifest(one_then_two / "one")["encoder"]["key"]
    # 2 -> 1: features encoded in shards by two processes are all found by one.
    cache = one_then_two / "cache-two-first"
    first = bench_run(2, one_then_two / "two-first", cache, fixtures_dir, paradigms="id-translation")
    assert first.returncode == 0, first.stderr[-2000:]
    assert manifest(one_then_two / "two-first")["llm"]["forward_passes"] > 0
    again = bench_run(1, one_then_two / "one-after", cache, fixtures_dir, paradigms="id-translation")
    assert again.returncode == 0, again.stderr[-2000:]
    assert manifest(one_then_two / "one-after")["llm"]["forward_passes"] == 0
    assert per_user(one_then_two / "one-after")["rank"].equals(per_user(one_then_two / "two-first")["rank"])


FAILING = '''
import torch
from bench.registry import Paradigm


class FailsOnRankOne(Paradigm):
    version = "1"
    description = "Popularity, except that rank 1 of a distributed run fails while fitting (test plugin)."

    def fit(self, split, context):
        if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
            raise RuntimeError("deliberate failure on rank 1")
        self.scores = torch.as_tensor(split.popularity, dtype=torch.float32)

    def score(self, users, stage):
        return self.scores.expand(len(users), -1).clone()

    def token_usage(self, users, stage):
        return None
'''


def test_a_failing_rank_ends_every_process_with_one_line_naming_it(tmp_path, fixtures_dir, cache_root):
    site = tmp_path / "site"
    (site / "bench_fails-0.1.dist-info").mkdir(parents=True)
    (site / "bench_fails.py").write_text(textwrap.dedent(FAILING))
    (site / "bench_fails-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-fails\n"
                                                                 "Version: 0.1\n")
    (site / "bench_fails-0.1.dist-info" / "entry_points.txt").write_text(
        "[bench.paradigms]\nfails-on-rank-one = bench_fails:FailsOnRankOne\n")
    start = time.monotonic()
    result = bench_run(2, tmp_path / "out", cache_root, fixtures_dir, paradigms="pop,fails-on-rank-one",
                       env={"PYTHONPATH": str(site), "BENCH_DIST_TIMEOUT": "60"}, timeout=300)
    assert result.returncode != 0
    assert time.monotonic() - start < 240
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: rank 1 of 2")]
    assert lines == ["error: rank 1 of 2: failed: RuntimeError: deliberate failure on rank 1"], result.stderr[-3000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("n, size", [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_shards_are_contiguous_unpadded_and_cover_every_row_once(n, size):
    parts = [World(rank, size).shard(n) for rank in range(size)]
    rows = [i for part in parts for i in range(n)[part]]
    assert rows == list(range(n))
    lengths = [part.stop - part.start for part in parts]
    assert max(lengths) - min(lengths) <= 1


def test_rank_zero_rejects_gathered_rows_that_repeat_or_miss_a_user(monkeypatch):
    import numpy as np

    from bench import evaluation

    class TwoRanks(World):
        def __init__(self, parts):
            super().__init__(0, 2)
            self.parts = parts

        def gather_to_main(self, obj):
            return self.parts

    class Users:
        user_ids = np.array(["[PAD]", "a", "b", "c"], dtype=object)
        users = np.arange(1, 4)

    def rows(users):
        return pd.DataFrame({"stage": "valid", "protocol": "full", "user": users, "rank": 1})

    good = TwoRanks([rows(["a", "b"]), rows(["c"])])
    monkeypatch.setattr(evaluation, "world", lambda: good)
    assert list(evaluation.gather_rows_on_main(None, Users())["user"]) == ["a", "b", "c"]
    padded = TwoRanks([rows(["a", "b"]), rows(["c", "c"])])  # a sampler that pads the last rank
    monkeypatch.setattr(evaluation, "world", lambda: padded)
    with pytest.raises(RuntimeError, match="exactly once"):
        evaluation.gather_rows_on_main(None, Users())


def test_ranks_that_built_different_caches_stop_with_a_fix():
    from bench.errors import BenchError

    class Machines(World):
        def all_gather_object(self, obj):
            return [obj, "0123abcd"]  # the other machine built its own split

    with pytest.raises(BenchError, match="same cache folder"):
        Machines(0, 2).check_same("ffff0000", "splits")
    Machines(0, 2).check_same("0123abcd", "splits")
