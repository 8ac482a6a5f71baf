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

jobs.py parses prompt files and keeps batch.json, runner.py runs jobs on the
backends, report.py writes the summaries.
"""

from splat3d.apps.batch.jobs import Job, read_jobs, read_status
from splat3d.apps.batch.report import write_summary
from splat3d.apps.batch.runner import Backend, run_batch, run_job

__all__ = ["Backend", "Job", "read_jobs", "read_status", "run_batch", "run_job", "write_summary"]
