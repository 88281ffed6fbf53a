"""End-to-end through the command line: a smoke run, report rebuild, and one-line errors for bad input."""
import json

import pandas as pd
import pytest

from conftest import run_cli

SLICE_ENV_KEYS = ("--preset", "smoke")


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
    for name in ("config.yaml", "manifest.json", "per_user.csv", "metrics.json", "results.md", "results.csv",
                 "tokens.csv"):
        assert (out / name).is_file(), name
    per_user = pd.read_csv(out / "per_user.csv", dtype={"user": str})
    assert list(per_user.columns[:5]) == ["paradigm", "seed", "stage", "user", "rank"]
    assert {"hit@10", "hit@100", "ndcg@10", "mrr@20"} <= set(per_user.columns)
    assert set(per_user["paradigm"]) == {"pop", "sasrec", "id-direct", "id-translation", "ra-rec"}
    assert set(per_user["seed"]) == {0, 1}
    assert per_user.groupby(["paradigm", "seed", "stage"]).size().eq(60).all()  # every user, every stage
    assert "1" in set(per_user["user"])  # raw ids from the data, not internal ids
    metrics = json.loads((out / "metrics.json").read_text())
    cell = metrics["paradigms"]["sasrec"]["stages"]["test"]["hit@100"]
    assert set(cell) == {"mean", "std", "per_seed"} and len(cell["per_seed"]) == 2
    assert metrics["paradigms"]["pop"]["version"] == "1" and len(metrics["split_hash"]) == 16
    test = per_user[(per_user["stage"] == "test") & (per_user["paradigm"] == "pop") & (per_user["seed"] == 0)]
    assert cell["mean"] == pytest.approx(
        per_user[(per_user["stage"] == "test") & (per_user["paradigm"] == "sasrec")]["hit@100"].mean())
    assert metrics["paradigms"]["pop"]["stages"]["test"]["ndcg@10"]["mean"] == pytest.approx(test["ndcg@10"].mean())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split_hash"] == metrics["split_hash"] and manifest["encoder"]["model"] == "SASRec"
    assert {"split", "encoder", "pop/seed0/fit", "sasrec/seed1/score_test"} <= set(manifest["timings_seconds"])
    table = (out / "results.md").read_text()
    assert "| pop |" in table and "| sasrec |" in table and "hit@100 | ndcg@10" in table
    assert "| pop |" in result.stdout


def test_report_rebuilds_tables_byte_for_byte(smoke_run):
    out, _ = smoke_run
    before = {n: (out / n).read_bytes() for n in ("results.md", "results.csv", "metrics.json")}
    for name in before:
        (out / name).unlink()
    result = run_cli("report", str(out))
    assert result.returncode == 0, result.stderr
    assert {n: (out / n).read_bytes() for n in before} == before


def test_same_config_and_seeds_give_identical_per_user_results(smoke_run, tmp_path, fixtures_dir, cache_root):
    out, _ = smoke_run
    again = tmp_path / "again"
    result = run_cli("run", "--paradigms", "all", "--dataset", "ml-slice", "--data-dir", str(fixtures_dir),
                     *SLICE_ENV_KEYS, "--seeds", "0,1", "--out", str(again), "--quiet",
                     env={"BENCH_CACHE": str(cache_root)})
    assert result.returncode == 0, result.stderr
    assert (again / "per_user.csv").read_bytes() == (out / "per_user.csv").read_bytes()


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
    assert "ml-100k, book, cloth" in result.stdout and "smoke" in result.stdout


def test_help_documents_every_run_flag():
    result = run_cli("run", "--help")
    for flag in ("--paradigms", "--dataset", "--data-dir", "--preset", "--config", "--set", "--seeds", "--out",
                 "--device", "--llm"):
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
