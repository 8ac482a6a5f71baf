"""`splat3d batch`: many prompts, each a normal run folder, here or on a Ray cluster.

A batch is a folder DIR with one run folder per prompt (``DIR/<slug>-s<seed>``)
and, at the end, ``summary.csv``, ``summary.md`` and ``index.html``. Each run
folder carries ``batch.json``: the job, its status (running, done, failed,
interrupted), attempts, seconds, Gaussian count, evaluator metrics and the
error of a failure. That file is the batch's whole state, so:

- a second invocation skips runs whose status is done;
- a run with checkpoints (killed, interrupted, or a failed attempt) resumes
  from its last checkpoint; one without starts over;
- every backend works the same: in this process, in a pool of processes
  (``--workers N``), or as one Ray task per prompt (``--ray [ADDRESS]``). On a
  cluster DIR must be a path that every node sees (a shared file system).

Ray schedules, places and retries tasks; this module only describes a job,
runs one, and reads the folders back.
"""

from __future__ import annotations

import csv
import functools
import html
import io
import json
import logging
import os
import socket
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from splat3d.errors import Splat3dError
from splat3d.io.fileio import FolderInUse, FolderLock, atomic_write, ensure_writable_dir, slug

STATUS_FILE = "batch.json"
JOB_KEYS = ("prompt", "method", "model", "seed", "steps", "set", "config", "name")


@dataclass
class Job:
    """One prompt of a batch and its overrides; ``name`` is its run folder under the batch folder."""

    prompt: str
    name: str = ""
    method: Optional[str] = None
    model: Optional[str] = None
    seed: Optional[int] = None
    steps: Optional[int] = None
    sets: list = field(default_factory=list)
    config: Optional[str] = None
    device: Optional[str] = None
    line: int = 0

    def build_config(self):
        from splat3d.run.config import build_config

        return build_config(
            self.config, self.sets, prompt__prompt=self.prompt, method=self.method, model=self.model,
            seed=self.seed, steps=self.steps, device=self.device,
        )  # fmt: skip


def _job_from_json(text: str, where: str, defaults: Job) -> Job:
    try:
        item = json.loads(text)
    except json.JSONDecodeError as e:
        raise Splat3dError(f"{where} is not valid JSON ({e.msg}); write one object per line, e.g. "
                           '{"prompt": "a red cube", "seed": 1}.') from None  # fmt: skip
    if isinstance(item, str):
        item = {"prompt": item}
    if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
        raise Splat3dError(f'{where} has no "prompt"; write e.g. {{"prompt": "a red cube", "seed": 1}}.')
    unknown = sorted(set(item) - set(JOB_KEYS))
    if unknown:
        raise Splat3dError(f"{where} has unknown key(s) {', '.join(unknown)}; the keys are {', '.join(JOB_KEYS)}.")
    sets = item.get("set") or []
    if isinstance(sets, dict):
        sets = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in sets.items()]
    if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
        raise Splat3dError(f'{where}: "set" must be a list of "KEY=VALUE" strings or an object of keys and values.')
    for key, kind in (("seed", int), ("steps", int), ("method", str), ("model", str), ("config", str), ("name", str)):
        if key in item and item[key] is not None and (not isinstance(item[key], kind) or isinstance(item[key], bool)):
            raise Splat3dError(f'{where}: "{key}" must be {"an integer" if kind is int else "a string"}.')
    name = item.get("name") or ""
    if name and (Path(name).name != name or name in (".", "..", STATUS_FILE) or name.startswith("summary.")
                 or name == "index.html"):  # fmt: skip
        raise Splat3dError(f'{where}: "name" must be a plain folder name inside the batch folder, got {name!r}.')
    return Job(
        prompt=item["prompt"], name=name,
        method=item.get("method", defaults.method), model=item.get("model", defaults.model),
        seed=item.get("seed", defaults.seed), steps=item.get("steps", defaults.steps),
        sets=[*defaults.sets, *sets], config=item.get("config", defaults.config), device=defaults.device,
    )  # fmt: skip


def read_jobs(path: Path, defaults: Job) -> list[Job]:
    """Jobs of a prompt file: one prompt per line (.txt) or one JSON object per line (.jsonl).

    Blank lines and lines starting with # are skipped. ``defaults`` carries the
    command line's settings; a JSONL line's keys override them. Every job's
    config is built here, so a bad key or value stops the batch before any run.
    """
    path = Path(path)
    if not path.is_file():
        raise Splat3dError(f"Prompt file {path} does not exist; give a .txt file (one prompt per line) or a .jsonl.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise Splat3dError(f"Cannot read prompt file {path} ({e}); give a UTF-8 text file.") from None
    is_jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    from splat3d.distill.priors import builtin_priors

    builtins = builtin_priors()
    jobs: list[Job] = []
    for number, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{path}:{number}"
        job = _job_from_json(text, where, defaults) if is_jsonl else Job(**{**asdict(defaults), "prompt": text})
        job.line = number
        # Ray workers run elsewhere: a local file or folder the job names must not depend on this shell's
        # folder. Preset and built-in prior names stay names (they take precedence over same-named paths).
        if job.config and ("/" in job.config or job.config.endswith((".yaml", ".yml"))):
            job.config = str(Path(job.config).expanduser().resolve())
        if job.model and job.model not in builtins and Path(job.model).expanduser().exists():
            job.model = str(Path(job.model).expanduser().resolve())
        if not job.prompt.strip():
            raise Splat3dError(f"{where} has an empty prompt; write what to generate, e.g. a red cube.")
        try:
            cfg = job.build_config()
        except Splat3dError as e:
            raise Splat3dError(f"{where}: {e}") from None
        job.seed, job.method = cfg.seed, cfg.method  # what the run will use, for names and summaries
        job.name = job.name or f"{slug(job.prompt)}-s{cfg.seed}"
        jobs.append(job)
    if not jobs:
        raise Splat3dError(f"Prompt file {path} has no prompts; write one prompt per line.")
    seen: dict[str, Job] = {}
    for job in jobs:
        if job.name in seen:
            raise Splat3dError(
                f"Lines {seen[job.name].line} and {job.line} of {path} would share the run folder {job.name!r}; "
                'give one of them another seed (or a "name" in a .jsonl file).'
            )
        seen[job.name] = job
    return jobs


# ------------------------------------------------------------------ one job
def read_status(run_dir: Path) -> Optional[dict]:
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _write_status(run_dir: Path, record: dict) -> None:
    text = json.dumps(record, indent=1)
    atomic_write(Path(run_dir) / STATUS_FILE, lambda tmp: Path(tmp).write_text(text))


def _error_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def run_job(job: dict, root: str, threads: Optional[int] = None) -> dict:
    """Run (or resume, or skip) one job in ``root/job['name']``; returns its batch.json record.

    A plain top-level function of plain arguments, so a process pool or a Ray
    worker can call it. Raises on failure (after recording it), so Ray retries.
    """
    spec = Job(**job)
    run_dir = Path(root) / spec.name
    # A run folder another process holds (a `generate --resume` of it, another batch) is left untouched:
    # FolderInUse is raised before anything is read or written.
    with FolderLock(run_dir, "splat3d batch", hint="or choose another batch folder"):
        return _run_job_locked(spec, job, run_dir, threads)


def _run_job_locked(spec: Job, job: dict, run_dir: Path, threads: Optional[int]) -> dict:
    import torch

    from splat3d.run.checkpoint import list_checkpoints
    from splat3d.run.trainer import RunInterrupted, Trainer, prepare_run_folder
    from splat3d.shapes.evaluate import evaluate_run

    previous = read_status(run_dir) or {}
    if previous.get("status") == "done":
        return previous
    if threads:
        torch.set_num_threads(int(threads))
    record = {
        "job": job, "status": "running", "attempts": previous.get("attempts", 0) + 1,
        "seconds": previous.get("seconds", 0.0), "host": socket.gethostname(), "pid": os.getpid(),
        "started": time.time(), "resumed_from": None, "error": None,
    }  # fmt: skip
    _write_status(run_dir, record)
    t0 = time.perf_counter()
    try:
        if list_checkpoints(run_dir / "checkpoints"):
            trainer = Trainer.resume(run_dir, steps=spec.steps, device=spec.device)
            record["resumed_from"] = trainer.step
        else:
            trainer = Trainer(spec.build_config(), run_dir)  # loads the model before anything is cleared
            prepare_run_folder(run_dir, overwrite=True)  # only our own outputs of an earlier attempt
        trainer.run()
        evaluation = evaluate_run(run_dir, strict=False)
        record.update(
            status="done", steps=trainer.step, gaussians=len(trainer.scene), method=trainer.config.method,
            model=trainer.config.model,
            metrics=None if evaluation is None else {
                "prompt_accuracy": evaluation.prompt_accuracy, "iou": evaluation.iou,
                "colour_error": evaluation.colour_error, "view_consistency": evaluation.view_consistency,
            },
        )  # fmt: skip
        return record
    except (RunInterrupted, KeyboardInterrupt):
        record["status"] = "interrupted"
        raise
    except BaseException as e:
        record.update(status="failed", error=_error_line(e), traceback=traceback.format_exc(limit=8))
        raise
    finally:
        record["seconds"] = round(record["seconds"] + time.perf_counter() - t0, 3)
        _write_status(run_dir, record)


def _run_with_retries(job: dict, root: str, threads: Optional[int], retries: int) -> dict:
    """Local backends retry here; Ray retries its tasks itself."""
    from splat3d.run.trainer import RunInterrupted

    for attempt in range(retries + 1):
        try:
            return run_job(job, root, threads)
        except (RunInterrupted, FolderInUse):
            raise
        except Exception:
            if attempt == retries:
                raise
    raise AssertionError("unreachable")


# ------------------------------------------------------------------ batch
@dataclass
class Backend:
    """Where jobs run: ``local`` (this process, or ``workers`` processes) or ``ray``."""

    kind: str = "local"
    workers: int = 1
    ray_address: Optional[str] = None  # None: start a local Ray instance
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    retries: int = 2


class BatchState:
    """Counts for the overview: done, running, failed, remaining, and an ETA."""

    def __init__(self, jobs: list[Job], root: Path):
        self.jobs, self.root = jobs, root
        self.since = time.time()
        self.records: dict[str, dict] = {}
        for job in jobs:
            self.refresh(job.name)
        self.skipped = [j.name for j in jobs if self.records[j.name].get("status") == "done"]
        self.started = time.perf_counter()
        self.finished_now = 0

    def refresh(self, name: str) -> dict:
        """The run's record on disk; one this batch has not touched yet counts as pending unless done."""
        record = read_status(self.root / name) or {}
        if record.get("status") != "done" and record.get("started", 0) < self.since:
            record = {**record, "status": "pending"}  # failed, partial or killed earlier: it runs again
        self.records[name] = record
        return record

    def counts(self) -> dict:
        status = [r.get("status", "pending") for r in self.records.values()]
        done, failed, running = status.count("done"), status.count("failed"), status.count("running")
        return {"done": done, "running": running, "failed": failed, "remaining": len(status) - done - failed}

    def eta(self) -> Optional[float]:
        if not self.finished_now:
            return None
        per_job = (time.perf_counter() - self.started) / self.finished_now  # throughput: counts parallel runs
        return per_job * self.counts()["remaining"]


def run_batch(
    jobs: list[Job],
    root: Path,
    backend: Backend,
    on_update: Callable[[BatchState, Optional[str]], None] = lambda state, message: None,
) -> BatchState:
    """Run every job not done yet; returns the final state. Summaries are written even if interrupted."""
    root = ensure_writable_dir(root).resolve()
    with FolderLock(root, "splat3d batch"):
        state = BatchState(jobs, root)
        todo = [j for j in jobs if j.name not in state.skipped]  # a partial run resumes from its checkpoint
        for job in todo:  # refuse up front, before any run starts, if another process holds one of them
            FolderLock(root / job.name, hint="or choose another --out").check_free()
        _run_all(jobs, todo, root, backend, state, on_update)
    return state


def _run_all(jobs: list[Job], todo: list[Job], root: Path, backend: Backend, state: BatchState, on_update) -> None:
    on_update(state, None)
    try:
        if backend.kind == "ray":
            _run_ray(todo, root, backend, state, on_update)
        elif backend.workers > 1:
            _run_pool(todo, root, backend, state, on_update)
        else:
            for job in todo:
                state.records[job.name] = {**state.records[job.name], "status": "running"}
                on_update(state, None)
                run = functools.partial(_run_with_retries, asdict(job), str(root), None, backend.retries)
                _finish(state, job, run, on_update)
    finally:
        write_summary(jobs, root)


def _finish(state: BatchState, job: Job, get: Callable[[], dict], on_update) -> None:
    from splat3d.run.trainer import RunInterrupted

    try:
        get()
    except FolderInUse:  # its folder belongs to another process: record nothing there
        raise
    except (RunInterrupted, KeyboardInterrupt):
        state.refresh(job.name)
        raise
    except Exception as e:  # the job's own record holds the error; a worker that died has none
        record = state.refresh(job.name)
        if record.get("status") != "failed":
            record.update(status="failed", error=record.get("error") or _error_line(e))
            _write_status(state.root / job.name, record)
        state.finished_now += 1
        on_update(state, f'failed: "{job.prompt}" (seed {job.seed}): {record["error"]}')
        return
    state.refresh(job.name)
    state.finished_now += 1
    on_update(state, None)


def _run_pool(todo: list[Job], root: Path, backend: Backend, state: BatchState, on_update) -> None:
    import multiprocessing

    # spawn: torch and forked threads do not mix
    with ProcessPoolExecutor(backend.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        threads = max(1, int(backend.cpus_per_task))
        futures = {pool.submit(_run_with_retries, asdict(j), str(root), threads, backend.retries): j for j in todo}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in finished:
                    _finish(state, futures[future], future.result, on_update)
                for job in todo:
                    state.refresh(job.name)
                on_update(state, None)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _run_ray(todo: list[Job], root: Path, backend: Backend, state: BatchState, on_update) -> None:
    try:
        import ray
    except ImportError:
        raise Splat3dError("--ray needs Ray; install it with: pip install 'splat3d[cluster]'.") from None

    started_here = not ray.is_initialized()
    if started_here:
        if backend.ray_address:
            try:
                ray.init(address=backend.ray_address, log_to_driver=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise Splat3dError(
                    f"Cannot join the Ray cluster at {backend.ray_address} ({_error_line(e)}); start it with "
                    "'ray start --head' or pass --ray alone for a local instance."
                ) from None
        else:
            cpus = int(backend.workers * backend.cpus_per_task) if backend.workers > 1 else os.cpu_count()
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        have = ray.cluster_resources()  # a task asking for more than any cluster has would wait forever
        for what, need in (("CPU", backend.cpus_per_task), ("GPU", backend.gpus_per_task)):
            if need > have.get(what, 0):
                raise Splat3dError(
                    f"Each task asks for {need:g} {what}s but the Ray cluster has {have.get(what, 0):g}; "
                    f"lower --{what.lower()}s-per-task or add nodes that have them."
                )
        task = ray.remote(run_job).options(
            num_cpus=backend.cpus_per_task, num_gpus=backend.gpus_per_task,
            max_retries=backend.retries, retry_exceptions=True,
        )  # fmt: skip
        threads = max(1, int(backend.cpus_per_task))
        refs = {task.remote(asdict(j), str(root), threads): j for j in todo}
        pending = list(refs)
        try:
            while pending:
                finished, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in finished:
                    _finish(state, refs[ref], lambda ref=ref: ray.get(ref), on_update)
                for job in todo:
                    state.refresh(job.name)
                on_update(state, None)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started_here:
            ray.shutdown()


# ---------------------------------------------------------------- summary
SUMMARY_FIELDS = ("prompt", "seed", "method", "status", "seconds", "gaussians", "prompt_accuracy", "iou",
                  "colour_error", "view_consistency", "attempts", "run", "error")  # fmt: skip


def summary_rows(jobs: list[Job], root: Path) -> list[dict]:
    rows = []
    for job in jobs:
        record = read_status(root / job.name) or {}
        metrics = record.get("metrics") or {}
        status = record.get("status", "pending")
        rows.append({
            "prompt": job.prompt, "seed": job.seed, "method": record.get("method") or job.method or "",
            "status": "partial" if status == "running" else status, "seconds": record.get("seconds", ""),
            "gaussians": record.get("gaussians", ""), **{k: metrics.get(k, "") for k in SUMMARY_FIELDS[6:10]},
            "attempts": record.get("attempts", 0), "run": job.name, "error": record.get("error") or "",
        })  # fmt: skip
    return rows


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return "" if value is None else str(value)


def write_summary(jobs: list[Job], root: Path) -> list[dict]:
    """DIR/summary.csv, DIR/summary.md and DIR/index.html (a contact sheet of every run's views)."""
    rows = summary_rows(jobs, root)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(root / "summary.csv", lambda tmp: Path(tmp).write_text(buffer.getvalue()))

    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "partial", "pending", "interrupted")}
    md = [f"# Batch: {len(rows)} prompts", "", ", ".join(f"{v} {k}" for k, v in counts.items() if v), "",
          "| " + " | ".join(SUMMARY_FIELDS) + " |", "|" + "---|" * len(SUMMARY_FIELDS)]  # fmt: skip
    for r in rows:
        cells = [_fmt(r[k]).replace("|", "\\|") for k in SUMMARY_FIELDS]
        cells[SUMMARY_FIELDS.index("run")] = f"[{r['run']}]({r['run']}/)"
        md.append("| " + " | ".join(cells) + " |")
    atomic_write(root / "summary.md", lambda tmp: Path(tmp).write_text("\n".join(md) + "\n"))

    cards = []
    for r in rows:
        views = root / r["run"] / "views.png"
        picture = (f'<img src="{html.escape(r["run"])}/views.png" alt="views of {html.escape(r["prompt"])}">'
                   if views.is_file() else '<div class="none">no views</div>')  # fmt: skip
        facts = [f"seed {r['seed']}", r["method"], r["status"]]
        if r["seconds"] != "":
            facts.append(f"{float(r['seconds']):.0f} s")
        if r["gaussians"] != "":
            facts.append(f"{int(r['gaussians']):,} Gaussians")
        if r["prompt_accuracy"] != "":
            facts.append(f"accuracy {r['prompt_accuracy']:.2f}, IoU {r['iou']:.2f}")
        error = f'<p class="error">{html.escape(r["error"])}</p>' if r["error"] else ""
        cards.append(
            f'<figure class="{r["status"]}"><a href="{html.escape(r["run"])}/">{picture}</a><figcaption>'
            f"<b>{html.escape(r['prompt'])}</b><br>{html.escape(' · '.join(f for f in facts if f))}{error}"
            "</figcaption></figure>"
        )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>splat3d batch: {len(rows)} prompts</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 1em; }}
figure {{ margin: 0; background: white; border: 1px solid #ddd; border-radius: 6px; padding: .5em; }}
figure.failed {{ border-color: #d33; }} .error {{ color: #b00; font-size: .85em; }}
img {{ width: 100%; image-rendering: pixelated; }} .none {{ height: 120px; background: #eee; }}
figcaption {{ font-size: .9em; margin-top: .4em; }}
</style></head><body>
<h1>splat3d batch: {len(rows)} prompts</h1>
<p>{html.escape(", ".join(f"{v} {k}" for k, v in counts.items() if v))} · <a href="summary.csv">summary.csv</a></p>
<main>
{chr(10).join(cards)}
</main></body></html>
"""
    atomic_write(root / "index.html", lambda tmp: Path(tmp).write_text(page))
    return rows
