"""End-to-end through the command line: a smoke run, report rebuild, interrupt and resume, and one-line errors
for bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from bench import registry
from bench.protocols import candidates_hash, load_candidates
from bench.rundir import Run
from conftest import ROOT, run_cli

SLICE_ENV_KEYS = ("--preset", "smoke", "--set", "eval.protocols=[full,uni19]")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, fixtures_dir, cache_root):
    out = tmp_path_factory.mktemp("runs") / "smoke"
    result = run_cli("run", "--paradigms", "all", "--dataset", "ml-slice", "--data-dir", str(fixtures_dir),
                     *SLICE_ENV_KEYS, "--seeds", "0,1", "--out", str(out), "--quiet",
                     env={"BENCH_CACHE": str(cache_root)})
    assert result.returncode == 0, result.stderr
    return out, result


def test_run_directory_has_every_file_in_the_documented_format(smoke_run):
    out, result = smoke_run
    assert "it/s]" not in result.stderr and "Loading weights" not in result.stderr  # --quiet: no bars at all
    for name in ("config.yaml", "manifest.json", "per_user.csv", "metrics.json", "results.md", "results.csv",
                 "tokens.csv", "candidates.npz", "results-uni19.csv", "significance-uni19.csv"):
        assert (out / name).is_file(), name
    saved = pd.read_csv(out / "per_user.csv", dtype={"user": str})
    assert list(saved.columns) == ["paradigm", "seed", "stage", "protocol", "user", "rank"]  # metrics: views
    per_user = Run.from_disk(out).per_user
    assert {"hit@10", "hit@100", "ndcg@10", "mrr@20"} <= set(per_user.columns)
    assert list(dict.fromkeys(per_user["protocol"])) == ["full", "uni19"]
    assert set(per_user["paradigm"]) == {"pop", "sasrec", "id-direct", "id-translation", "ra-rec"}
    assert set(per_user["seed"]) == {0, 1}
    # every user, every stage, every protocol
    assert per_user.groupby(["paradigm", "seed", "stage", "protocol"]).size().eq(60).all()
    assert "1" in set(per_user["user"])  # raw ids from the data, not internal ids
    metrics = json.loads((out / "metrics.json").read_text())
    cell = metrics["paradigms"]["sasrec"]["stages"]["test"]["hit@100"]
    assert set(cell) == {"mean", "std", "per_seed"} and len(cell["per_seed"]) == 2
    assert metrics["paradigms"]["pop"]["version"] == "1" and len(metrics["split_hash"]) == 16
    per_user = per_user[per_user["protocol"] == "full"]  # the main protocol's metrics are metrics.json's paradigms
    test = per_user[(per_user["stage"] == "test") & (per_user["paradigm"] == "pop") & (per_user["seed"] == 0)]
    assert cell["mean"] == pytest.approx(
        per_user[(per_user["stage"] == "test") & (per_user["paradigm"] == "sasrec")]["hit@100"].mean())
    sampled = metrics["protocols"]["uni19"]["sasrec"]["stages"]["test"]["hit@10"]["mean"]
    assert 0 < sampled <= 1 and metrics["protocols"]["full"]["sasrec"]["stages"]["test"]["hit@100"]["mean"] == \
        cell["mean"]
    assert metrics["paradigms"]["pop"]["stages"]["test"]["ndcg@10"]["mean"] == pytest.approx(test["ndcg@10"].mean())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split_hash"] == metrics["split_hash"] and manifest["encoder"]["model"] == "SASRec"
    assert {"split", "encoder", "pop/seed0/fit", "sasrec/seed1/score_test"} <= set(manifest["timings_seconds"])
    from bench.precision import cpu_description
    assert {k: manifest["hardware"][k] for k in ("cpu_model", "cpu_capability", "cpu_flags")} == cpu_description()
    table = (out / "results.md").read_text()
    assert "| pop |" in table and "| sasrec |" in table and "| HR@100 | NDCG@10 |" in table
    assert "| pop |" in result.stdout
    trained = manifest["paradigms"]["id-direct"]["seeds"]["0"]["training"]["training_samples"]
    assert 0 < trained <= 60 * 2 and manifest["paradigms"]["pop"]["seeds"]["0"]["training"] is None  # smoke: 2/user
    rows = {line.split(" | ")[1]: line for line in table.splitlines() if line.startswith("| ")}
    assert "| trainable params | training samples |" in table
    assert f" | {trained} | " in rows["id-direct"] and rows["pop"].endswith("| 0 | - | - | 0.0 |")


def test_sampled_protocols_rank_every_paradigm_against_the_same_stored_lists(smoke_run):
    out, _ = smoke_run
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["protocols"]["uni19"]
    assert record["negatives"] == 19 and record["sampling"] == "uni" and record["seed"] == 0
    assert candidates_hash(load_candidates(out / "candidates.npz")) == {"uni19": record["hash"]}
    ranks = pd.read_csv(out / "per_user.csv", dtype={"user": str}).pivot_table(
        index=["paradigm", "seed", "stage", "user"], columns="protocol", values="rank")
    # the 19 negatives are items outside the history, so a sampled rank never exceeds the full (masked) one
    assert ranks["uni19"].between(1, 20).all() and (ranks["uni19"] <= ranks["full"]).all()
    table = (out / "results.md").read_text()
    assert "## Protocol uni19" in table and "the target among 19 negatives sampled uniformly" in table
    assert "## Do the protocols agree?" in table and "| uni19 |" in table
    sampled = pd.read_csv(out / "results-uni19.csv")
    assert "hit@10_mean" in sampled.columns and "hit@100_mean" not in sampled.columns  # HR@100 of 20 is always 1


TABLES = ("results.md", "results.csv", "results.tex", "significance.csv", "metrics.json", "results-uni19.csv",
          "results-uni19.tex", "significance-uni19.csv")
PLOTS = ("metrics.png", "tokens.png", "metrics-uni19.png")


def test_report_rebuilds_tables_byte_for_byte_and_plots(smoke_run):
    out, _ = smoke_run
    before = {n: (out / n).read_bytes() for n in TABLES}
    for name in (*TABLES, *PLOTS):
        (out / name).unlink()
    result = run_cli("report", str(out))
    assert result.returncode == 0, result.stderr
    assert {n: (out / n).read_bytes() for n in before} == before
    for name in PLOTS:
        width, height = png_size(out / name)
        assert width >= 800 and height >= 300 and (out / name).stat().st_size > 20_000, name


def png_size(path):
    """(width, height) in pixels from a PNG's IHDR chunk."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_interrupted_run_resumes_without_recomputing_and_matches_an_uninterrupted_run(smoke_run, tmp_path,
                                                                                      fixtures_dir, cache_root):
    """Interrupted after 3 of 8 jobs and resumed: the finished jobs are reused, the others computed, and every
    paradigm the uninterrupted smoke run also ran (trained ones included) has byte-identical rows. The last
    paradigm, ra-rec-untrained, needs no training: it keeps the run busy long enough to be interrupted."""
    out, _ = smoke_run
    again = tmp_path / "again"
    shared = ("pop", "sasrec", "id-direct")
    args = ["run", "--paradigms", ",".join((*shared, "ra-rec-untrained")), "--dataset", "ml-slice", "--data-dir",
            str(fixtures_dir), *SLICE_ENV_KEYS, "--seeds", "0,1", "--out", str(again), "--quiet"]
    env = {**os.environ, "BENCH_CACHE": str(cache_root)}
    process = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    jobs = tmp_path / ".again.partial" / "jobs"
    deadline = time.time() + 300
    while len(list(jobs.glob("*.json"))) < 3 and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "--resume" in stderr.splitlines()[-1] and "Traceback" not in stderr
    assert not again.exists()  # nothing partial where results belong
    finished = sorted(p.name for p in jobs.glob("*.json"))
    assert 3 <= len(finished) < 8 and not list(jobs.glob(".*.tmp"))
    result = run_cli("run", "--resume", str(again), "--quiet", env={"BENCH_CACHE": str(cache_root)})  # same cache
    assert result.returncode == 0, result.stderr
    assert f"resuming {again}: {len(finished)} of 8 (paradigm, seed) jobs already finished" in result.stderr
    manifest = json.loads((again / "manifest.json").read_text())
    resumed, timed = manifest["resumed_jobs"], manifest["timings_seconds"]
    assert len(resumed) == len(finished)
    assert all(f"{job}/fit" not in timed for job in resumed)  # finished jobs were not recomputed
    assert sum(key.endswith("/fit") for key in timed) == 8 - len(resumed)  # the others were
    resumed_rows, uninterrupted = (pd.read_csv(d / "per_user.csv", dtype={"user": str}) for d in (again, out))
    for name in shared:
        pick = lambda frame: frame[frame["paradigm"] == name].reset_index(drop=True)  # noqa: E731
        pd.testing.assert_frame_equal(pick(resumed_rows), pick(uninterrupted))
    assert resumed_rows.groupby(["paradigm", "seed", "stage", "protocol"]).size().eq(60).all()
    assert len(resumed_rows) == 8 * 2 * 2 * 60
    assert not (tmp_path / ".again.partial").exists()
    result = run_cli("run", "--resume", str(again))
    assert result.returncode == 2 and "already finished" in result.stderr


def test_a_job_interrupted_while_training_resumes_from_its_last_epoch(smoke_run, tmp_path, fixtures_dir,
                                                                      cache_root):
    """Interrupted once its training has saved an epoch: the job's checkpoint stays in the working folder,
    ``--resume`` continues that training after the saved epoch instead of from the start, and the rows are those
    of the uninterrupted smoke run."""
    out, _ = smoke_run
    again = tmp_path / "again"
    args = ["run", "--paradigms", "ra-rec", "--dataset", "ml-slice", "--data-dir", str(fixtures_dir),
            *SLICE_ENV_KEYS, "--seeds", "0", "--out", str(again), "--quiet"]
    env = {**os.environ, "BENCH_CACHE": str(cache_root)}
    process = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    jobs, deadline = tmp_path / ".again.partial" / "jobs", time.time() + 300
    while not list(jobs.glob("*.training.pt")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert [p.name for p in jobs.glob("*.training.pt")] == [f"0000-v{registry.get('ra-rec').version}.training.pt"]
    result = run_cli("run", "--resume", str(again), env={"BENCH_CACHE": str(cache_root)})
    assert result.returncode == 0, result.stderr
    assert "ra-rec fit: continuing after epoch" in result.stderr
    rows, uninterrupted = (pd.read_csv(d / "per_user.csv", dtype={"user": str}) for d in (again, out))
    pick = lambda frame: frame[(frame["paradigm"] == "ra-rec") & (frame["seed"] == 0)].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(pick(rows), pick(uninterrupted))


def test_resume_refuses_extra_options_and_missing_runs(tmp_path):
    result = run_cli("run", "--resume", str(tmp_path / "x"), "--seeds", "0")
    assert result.returncode == 2 and "drop --seeds" in result.stderr
    result = run_cli("run", "--resume", str(tmp_path / "x"))
    assert result.returncode == 2 and "no interrupted run there" in result.stderr


def test_compare_tests_the_same_paradigm_across_runs_and_refuses_other_splits(smoke_run, tmp_path):
    out, _ = smoke_run
    result = run_cli("compare", str(out), str(out), "--out", str(tmp_path / "c.csv"))
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "c.csv")
    assert set(table["a"]) == {f"A:{p}" for p in ("pop", "sasrec", "id-direct", "id-translation", "ra-rec")}
    assert (table["p_holm"] == 1).all() and (table["diff"] == 0).all()  # a run against itself: never significant
    other = tmp_path / "other"
    other.mkdir()
    for name in ("per_user.csv", "tokens.csv", "config.yaml"):
        (other / name).write_bytes((out / name).read_bytes())
    manifest = json.loads((out / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "split_hash": "0" * 16}))
    result = run_cli("compare", str(out), str(other))
    assert result.returncode == 2 and "different splits" in result.stderr
    result = run_cli("compare", str(out), str(out), "--protocol", "uni19", "--out", str(tmp_path / "u.csv"))
    assert result.returncode == 0 and "HR@10" in result.stdout and "HR@100" not in result.stdout, result.stderr
    assert set(pd.read_csv(tmp_path / "u.csv")["metric"]) == {"ndcg@10", "hit@10", "mrr@10"}
    redrawn = {**manifest, "protocols": {"uni19": {**manifest["protocols"]["uni19"], "hash": "f" * 16}}}
    (other / "manifest.json").write_text(json.dumps(redrawn))
    result = run_cli("compare", str(out), str(other), "--protocol", "uni19")
    assert result.returncode == 2 and "candidate lists differ" in result.stderr


def _bad_inter(tmp_path, body, header="user_id:token\titem_id:token\ttimestamp:float"):
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    (folder / "bad.inter").write_text(header + "\n" + body)
    return tmp_path


@pytest.mark.parametrize("case", ["malformed", "missing_column", "unknown_dataset", "unknown_paradigm",
                                  "unknown_key", "empty_after_filter", "bad_seeds"])
def test_bad_input_gives_one_line_error_and_no_results(case, tmp_path, fixtures_dir, cache_root):
    args = ["run", "--paradigms", "pop", "--preset", "smoke", "--out", str(tmp_path / "out"), "--quiet"]
    if case == "malformed":
        args += ["--dataset", "bad", "--data-dir", str(_bad_inter(tmp_path, "u\ti\t1\nu\ti2\t2\t9\n")),]
        expect = "bad.inter:3: malformed line"
    elif case == "missing_column":
        args += ["--dataset", "bad", "--data-dir",
                 str(_bad_inter(tmp_path, "u\t1\n", header="user_id:token\ttimestamp:float"))]
        expect = "missing required column 'item_id'"
    elif case == "unknown_dataset":
        args += ["--dataset", "nope", "--data-dir", str(tmp_path)]
        expect = "unknown dataset 'nope'"
    elif case == "unknown_paradigm":
        args[2] = "sasrek"
        expect = "unknown paradigm 'sasrek' (did you mean 'sasrec'?)"
    elif case == "unknown_key":
        args += ["--set", "encoder.epoch=3"]
        expect = "unknown config key 'encoder.epoch' (did you mean 'encoder.epochs'?)"
    elif case == "empty_after_filter":
        args += ["--dataset", "ml-slice", "--data-dir", str(fixtures_dir), "--set", "data.min_item_inter=1000"]
        expect = "empty after filtering"
    else:
        args += ["--seeds", "a,b"]
        expect = "--seeds"
    result = run_cli(*args, env={"BENCH_CACHE": str(cache_root)})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_list_shows_paradigms_datasets_presets():
    result = run_cli("list")
    assert result.returncode == 0, result.stderr
    assert "pop" in result.stdout and "sasrec" in result.stdout and "v1" in result.stdout
    assert "book, cloth, ml-100k" in result.stdout and "smoke" in result.stdout


def test_help_documents_every_run_flag():
    result = run_cli("run", "--help")
    for flag in ("--paradigms", "--dataset", "--data-dir", "--preset", "--config", "--set", "--seeds", "--out",
                 "--device", "--llm", "--sweep", "--resume"):
        assert flag in result.stdout


def test_dataset_without_titles_skips_id_translation_and_completes_the_rest(tmp_path, fixtures_dir, cache_root):
    (tmp_path / "notitles").mkdir()
    (tmp_path / "notitles" / "notitles.inter").write_bytes((fixtures_dir / "ml-slice" / "ml-slice.inter").read_bytes())
    out = tmp_path / "out"
    result = run_cli("run", "--paradigms", "pop,id-translation", "--dataset", "notitles", "--data-dir", str(tmp_path),
                     "--preset", "smoke", "--out", str(out), "--quiet", env={"BENCH_CACHE": str(cache_root)})
    assert result.returncode == 0, result.stderr
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped id-translation")]
    assert len(skipped) == 1 and "dataset 'notitles' has no item titles" in skipped[0]
    assert set(pd.read_csv(out / "per_user.csv")["paradigm"]) == {"pop"}
    assert "id-translation" in json.loads((out / "manifest.json").read_text())["skipped"]


def test_raw_ids_that_differ_from_internal_ones_map_back_exactly(tmp_path, fixtures_dir, cache_root, monkeypatch):
    """Users and items renamed to strings in reverse order: pop's ranks in per_user.csv, keyed by raw user id,
    equal ranks computed from the raw file with pandas alone; the manifest records the arguments given."""
    from bench import cli

    raw = pd.read_csv(fixtures_dir / "ml-slice" / "ml-slice.inter", sep="\t")
    raw.columns = ["user", "item", "rating", "time"]
    raw = raw[raw["user"].isin(sorted(raw["user"].unique())[:60])]
    raw = raw.assign(user="u-" + (1000 - raw["user"]).astype(str), item="i-" + (9999 - raw["item"]).astype(str))
    folder = tmp_path / "data" / "renamed"
    folder.mkdir(parents=True)
    raw[["user", "item", "time"]].to_csv(folder / "renamed.inter", sep="\t", index=False,
                                         header=["user_id:token", "item_id:token", "timestamp:float"])
    monkeypatch.setenv("BENCH_CACHE", str(cache_root))
    args = ["run", "--paradigms", "pop", "--dataset", "renamed", "--data-dir", str(tmp_path / "data"),
            "--preset", "smoke", "--set", "data.max_users=null", "--out", str(tmp_path / "run"), "--quiet"]
    assert cli.main(args) == 0
    per_user = pd.read_csv(tmp_path / "run" / "per_user.csv", dtype={"user": str})
    got = per_user.set_index(["stage", "user"])["rank"]
    expected = _pop_ranks(raw)
    assert set(got.index) == set(expected) and all(got[key] == rank for key, rank in expected.items())
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["command"] == " ".join(["bench", *args])


def _pop_ranks(raw: pd.DataFrame) -> dict:
    """(stage, raw user) -> rank of the stage's target under training popularity, history masked, ties against."""
    ordered = raw.sort_values("time", kind="stable")
    parts = {user: list(group["item"]) for user, group in ordered.groupby("user", sort=False)}
    popularity = pd.Series([i for items in parts.values() for i in items[:-2]]).value_counts()
    counts = {item: int(popularity.get(item, 0)) for item in raw["item"].unique()}
    ranks = {}
    for user, items in parts.items():
        for stage, cut in (("valid", -2), ("test", -1)):
            target, history = items[cut], set(items[:cut])
            ranks[(stage, user)] = 1 + sum(1 for item, count in counts.items()
                                           if item != target and item not in history and count >= counts[target])
    return ranks
