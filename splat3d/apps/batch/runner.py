"""Running a batch: one job in a locked run folder, and the backends (here, a process pool, Ray).

Ray schedules, places and retries tasks; this module only runs one job and
reads the folders back. Every backend works the same, because batch.json in
each run folder is the batch's whole state.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from splat3d.apps.batch.jobs import Job, read_status, write_status
from splat3d.apps.batch.report import write_summary
from splat3d.errors import Splat3dError
from splat3d.io.fileio import FolderInUse, FolderLock, ensure_writable_dir


def _error_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def run_job(job: dict, root: str, threads: Optional[int] = None) -> dict:
    """Run (or resume, or skip) one job in ``root/job['name']``; returns its batch.json record.

    A plain top-level function of plain arguments, so a process pool or a Ray
    worker can call it. Raises on failure (after recording it), so Ray retries.
    """
    import torch

    from splat3d.run.folder import RunFolder
    from splat3d.run.trainer import RunInterrupted, resume_run, start_run

    spec = Job(**job)
    run_dir = Path(root) / spec.name
    folder = RunFolder(run_dir)
    # Locked before anything is read or written: a run folder another process holds (a `generate --resume`
    # of it, another batch) raises FolderInUse and is left untouched. start_run/resume_run share the lock.
    with folder.locked("splat3d batch", hint="or choose another batch folder"):
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
        write_status(run_dir, record)
        t0 = time.perf_counter()
        try:
            if folder.checkpoints():
                opened = resume_run(folder, steps=spec.steps, device=spec.device)
            else:  # a first attempt, or one that failed before its first checkpoint: clear what it left
                opened = start_run(spec.build_config(), folder, overwrite=True)
            with opened as trainer:
                record["resumed_from"] = trainer.step or None
                trainer.run()
            record.update(
                status="done", steps=trainer.step, gaussians=len(trainer.scene), method=trainer.config.method,
                model=trainer.config.model, metrics=evaluate(run_dir),
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
            write_status(run_dir, record)


def evaluate(run_dir: Path) -> Optional[dict]:
    """Metrics of a finished run from the first evaluator that knows its world, or None.

    Evaluators plug in through the ``splat3d.evaluators`` entry point group
    (pyproject.toml): a function of a run folder that returns a dict of
    metrics, or None for a run it does not know. The shapes world registers
    one; batch never imports a world itself.
    """
    from importlib.metadata import entry_points

    for entry in entry_points(group="splat3d.evaluators"):
        metrics = entry.load()(run_dir)
        if metrics is not None:
            return metrics
    return None


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

    def __post_init__(self):
        if self.workers < 1 or self.cpus_per_task <= 0 or self.gpus_per_task < 0 or self.retries < 0:
            raise Splat3dError("--workers and --cpus-per-task must be positive, --gpus-per-task and --retries >= 0.")
        if self.kind != "ray" and self.gpus_per_task:
            raise Splat3dError("--gpus-per-task applies to Ray tasks; add --ray (or --ray ADDRESS).")


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
            write_status(state.root / job.name, record)
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
