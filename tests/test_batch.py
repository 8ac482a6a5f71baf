"""`splat3d batch`: prompt files, local and Ray backends, failures, skipping and resuming."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import FAST, run_cli

from splat3d.apps.batch import Job, read_jobs, read_status
from splat3d.errors import Splat3dError

BATCH_SETS = [x for item in (*FAST, "output.checkpoint_every=2") for x in ("--set", item)]


@pytest.fixture(scope="module")
def prior_dir(tiny_priors):
    return tiny_priors[("pixel", "epsilon")]


def summary(out):
    with open(out / "summary.csv") as f:
        return {row["prompt"]: row for row in csv.DictReader(f)}


def steps_of(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------ prompt files
def test_read_jobs_text_and_jsonl(tmp_path):
    (tmp_path / "p.txt").write_text("# a comment\na red cube\n\n  a blue sphere  \n")
    jobs = read_jobs(tmp_path / "p.txt", Job(prompt="", method="sds", seed=4, steps=7))
    assert [(j.prompt, j.name, j.method, j.seed, j.steps) for j in jobs] == [
        ("a red cube", "a-red-cube-s4", "sds", 4, 7),
        ("a blue sphere", "a-blue-sphere-s4", "sds", 4, 7),
    ]
    (tmp_path / "p.jsonl").write_text(
        '{"prompt": "a red cube", "seed": 1, "method": "vsd"}\n'
        '{"prompt": "a red cube", "seed": 2, "set": {"guidance.lookahead_scale": 0.5}, "steps": 3}\n'
        '"a green cone"\n'
    )
    jobs = read_jobs(tmp_path / "p.jsonl", Job(prompt="", sets=["camera.render_size=32"]))
    assert [j.name for j in jobs] == ["a-red-cube-s1", "a-red-cube-s2", "a-green-cone-s0"]
    assert jobs[0].method == "vsd" and jobs[1].method == "l2vsd"
    cfg = jobs[1].build_config()
    assert cfg.guidance.lookahead_scale == 0.5 and cfg.steps == 3 and cfg.camera.render_size == 32


def test_read_jobs_pins_local_paths_for_remote_workers(tmp_path, monkeypatch, prior_dir):
    # A Ray task runs in another folder (or machine): relative paths must already be absolute.
    monkeypatch.chdir(prior_dir.parent)
    (tmp_path / "p.jsonl").write_text(
        f'{{"prompt": "a red cube", "model": "{prior_dir.name}", "set": {{"init.path": null}}}}\n'
        '{"prompt": "a blue cube", "model": "shapes"}\n'
    )
    jobs = read_jobs(tmp_path / "p.jsonl", Job(prompt=""))
    assert jobs[0].model == str(prior_dir.resolve()) and jobs[1].model == "shapes"
    assert jobs[0].sets == ["init.path=null"] and jobs[0].build_config().init.path is None


@pytest.mark.parametrize(
    "text, words",
    [
        ('{"prompt": "a red cube"}\n{"prompt": "a red cube"}\n', ["Lines 1 and 2", "seed"]),
        ('{"prompt": "a red cube", "colour": "red"}\n', ["p.jsonl:1", "unknown key", "colour"]),
        ('{"prompt": "a red cube",\n', ["p.jsonl:1", "not valid JSON"]),
        ('{"seed": 1}\n', ["p.jsonl:1", '"prompt"']),
        ('{"prompt": "a red cube", "set": ["guidance.lookahed_scale=1"]}\n', ["p.jsonl:1", "lookahead_scale"]),
        ('{"prompt": "a red cube", "seed": "one"}\n', ["p.jsonl:1", "integer"]),
        ("# nothing\n", ["no prompts"]),
        ('{"prompt": "a red cube", "name": "../elsewhere"}\n', ["p.jsonl:1", "plain folder name"]),
        ('{"prompt": "a red cube", "name": "summary.csv"}\n', ["p.jsonl:1", "plain folder name"]),
    ],
)
def test_read_jobs_rejects_bad_files_with_one_sentence(tmp_path, text, words):
    (tmp_path / "p.jsonl").write_text(text)
    with pytest.raises(Splat3dError) as e:
        read_jobs(tmp_path / "p.jsonl", Job(prompt=""))
    for word in words:
        assert word in str(e.value)


def test_batch_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    code, _, err = run_cli(capsys, "batch", tmp_path / "missing.txt", "--out", tmp_path / "out")
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    (tmp_path / "p.txt").write_text("a red cube\n")
    code, _, err = run_cli(capsys, "batch", tmp_path / "p.txt", "--out", tmp_path / "out", "--gpus-per-task", 1)
    assert code == 2 and "--ray" in err
    code, _, err = run_cli(capsys, "batch", tmp_path / "p.txt", "--out", tmp_path / "out", "--set", "nope=1")
    assert code == 2 and "p.txt:1" in err
    assert not (tmp_path / "out").exists()


def test_ray_flag_takes_an_optional_address():
    from splat3d_cli.main import _optional_ray_value

    assert _optional_ray_value(["batch", "p.txt", "--ray"]) == ["batch", "p.txt", "--ray=local"]
    assert _optional_ray_value(["batch", "--ray", "p.txt"]) == ["batch", "--ray=local", "p.txt"]
    assert _optional_ray_value(["batch", "--ray", "10.0.0.1:6379", "p.txt"])[2] == "10.0.0.1:6379"
    assert _optional_ray_value(["batch", "--ray", "auto", "p.txt"])[2] == "auto"
    assert _optional_ray_value(["batch", "--ray", "ray://head:10001"])[2] == "ray://head:10001"


# ------------------------------------------------------------ Ray, failure, skip
def test_ray_batch_refuses_tasks_the_cluster_cannot_place(prior_dir, tmp_path, capsys):
    # A task asking for a GPU on a cluster without one would wait forever; say so instead.
    (tmp_path / "p.txt").write_text("a red cube\n")
    args = ["batch", tmp_path / "p.txt", "--out", tmp_path / "out", "--model", prior_dir, "--steps", 2, *BATCH_SETS]
    code, _, err = run_cli(capsys, *args, "--ray", "--gpus-per-task", 1)
    assert code == 2 and "1 GPUs but the Ray cluster has 0" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "a-red-cube-s0").exists()


def test_ray_batch_reports_a_failure_finishes_the_rest_and_skips_them_next_time(prior_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "a red cube"}\n'
        '{"prompt": "a green cone", "seed": 3, "method": "sds"}\n'
        f'{{"prompt": "a blue sphere", "model": "{tmp_path / "no-such-model"}"}}\n'
        '{"prompt": "a yellow torus", "set": {"guidance.lookahead_scale": 0.5}}\n'
    )
    out = tmp_path / "batch"
    args = ["batch", prompts, "--out", out, "--model", prior_dir, "--steps", 6, "--retries", 1, *BATCH_SETS]
    code, stdout, stderr = run_cli(capsys, *args, "--ray", "--workers", 2)  # a local Ray with 2 CPUs
    assert code == 1, stderr
    rows = summary(out)
    assert {p: r["status"] for p, r in rows.items()} == {
        "a red cube": "done", "a green cone": "done", "a blue sphere": "failed", "a yellow torus": "done",
    }  # fmt: skip
    failed = rows["a blue sphere"]
    assert "no-such-model" in failed["error"] and failed["attempts"] == "2"  # retried once by Ray, then reported
    assert "no-such-model" in stderr and "3 done, 1 failed of 4" in stdout
    assert rows["a green cone"]["method"] == "sds" and rows["a green cone"]["run"] == "a-green-cone-s3"
    for prompt in ("a red cube", "a green cone", "a yellow torus"):
        run = out / rows[prompt]["run"]
        assert (run / "scene.ply").is_file() and (run / "views.png").is_file()
        assert steps_of(run)[-1] == 6 and int(rows[prompt]["gaussians"]) > 0
    assert json.loads((out / "a-yellow-torus-s0" / "batch.json").read_text())["job"]["sets"][-1].startswith(
        "guidance.lookahead_scale=0.5"
    )
    page = (out / "index.html").read_text()
    assert page.count("<figure") == 4 and page.count("/views.png") == 3 and "no-such-model" in page
    assert "| a blue sphere |" in (out / "summary.md").read_text()

    # A second invocation (here, in this process) skips the three finished runs.
    before = {p: (out / r["run"] / "scene.ply").stat().st_mtime_ns for p, r in rows.items() if r["status"] == "done"}
    code, stdout, stderr = run_cli(capsys, *args)
    assert code == 1 and "(3 done earlier)" in stderr
    for prompt, mtime in before.items():
        assert (out / rows[prompt]["run"] / "scene.ply").stat().st_mtime_ns == mtime
        assert read_status(out / rows[prompt]["run"])["attempts"] == 1
    assert summary(out)["a blue sphere"]["attempts"] == "4"  # tried again (and retried), still reported


# ------------------------------------------------------------ kill and resume
def test_killed_batch_resumes_without_redoing_finished_runs_or_losing_a_partial_one(prior_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere\na green cone\n")
    out = tmp_path / "batch"
    cmd = [sys.executable, "-m", "splat3d_cli.main", "batch", str(prompts), "--out", str(out),
           "--model", str(prior_dir), "--steps", "40", "--quiet", *map(str, BATCH_SETS)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first, second = out / "a-red-cube-s0", out / "a-blue-sphere-s0"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 600
        # Kill once the first run is done and the second is part-way, past a checkpoint.
        while time.time() < deadline and proc.poll() is None:
            record = read_status(first) or {}
            if record.get("status") == "done" and (second / "metrics.jsonl").is_file() and 8 <= len(steps_of(second)):
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert read_status(second)["status"] == "running"  # killed: nobody could record anything else
    finished_mtime = (first / "scene.ply").stat().st_mtime_ns
    killed_at = steps_of(second)[-1]
    assert killed_at < 40

    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = summary(out)
    assert all(r["status"] == "done" for r in rows.values())
    assert (first / "scene.ply").stat().st_mtime_ns == finished_mtime and read_status(first)["attempts"] == 1
    record = read_status(second)
    assert record["attempts"] == 2 and 0 < record["resumed_from"] <= killed_at
    assert steps_of(second) == list(range(1, 41))  # resumed from its checkpoint: no gap, no repeat
    assert steps_of(out / "a-green-cone-s0")[-1] == 40


def test_process_pool_runs_prompts_side_by_side(prior_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue sphere\n")
    out = tmp_path / "batch"
    code, stdout, stderr = run_cli(
        capsys, "batch", prompts, "--out", out, "--model", prior_dir, "--steps", 4, "--workers", 2, *BATCH_SETS
    )
    assert code == 0, stderr
    records = [read_status(out / name) for name in ("a-red-cube-s0", "a-blue-sphere-s0")]
    assert all(r["status"] == "done" for r in records)
    assert os.getpid() not in {r["pid"] for r in records}  # ran in worker processes
