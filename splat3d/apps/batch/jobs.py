"""A batch's jobs: the prompt file (lines or JSONL) and each run folder's batch.json.

batch.json is a job's whole state (status running, done, failed or
interrupted; attempts; seconds; Gaussian count; evaluator metrics; the error
of a failure), so a batch can always be read back from its folders.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from splat3d.errors import Splat3dError
from splat3d.io.fileio import atomic_write, slug

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


def read_status(run_dir: Path) -> Optional[dict]:
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def write_status(run_dir: Path, record: dict) -> None:
    text = json.dumps(record, indent=1)
    atomic_write(Path(run_dir) / STATUS_FILE, lambda tmp: Path(tmp).write_text(text))
