"""Does L2-VSD win? SDS, VSD, L-VSD and L2-VSD on the shapes world, scored against the truth.

Every run uses the cpu preset (same cameras, densification and steps for all
methods) with the shapes prior, then `splat3d eval`'s metrics. Each finished
run writes benchmarks/results/distill/<run>.json, so an interrupted benchmark
resumes where it stopped (finished runs are skipped).

    python benchmarks/distill.py                       # 12 prompts x 3 seeds x 4 methods x budgets 1x, 3x
    python benchmarks/distill.py --prompts 2 --seeds 0 --budgets 1   # a quick subset
    python benchmarks/distill.py --seeds 0 --budgets 3 --prompt "a red house" --prompt "a green mug"
    python benchmarks/distill.py --sweep               # L2-VSD's eta and linear-term variants on a subset
    python benchmarks/distill.py --janus --methods l2vsd,vsd --budgets 1   # each Janus mitigation, paired
    python benchmarks/distill.py --regime --budgets 1,3 --prompts 4        # LoRA lr x eta, l2vsd paired with vsd
    python benchmarks/distill.py --regime --lrs 0.001 --etas 1 --budgets 1  # one corner of that sweep
    python benchmarks/distill.py --linear-term --budgets 1  # finite-difference l2vsd, paired with exact and vsd
    python benchmarks/distill.py --report              # tables, plot and picture grid into docs/benchmarks.md
    python benchmarks/distill.py --compare DIR_A DIR_B # runs of the same name (two priors, say), paired: A - B

On 2 cores, two one-thread runs side by side finish sooner than one run after
another with two threads (small tensors leave the second thread idle much of
the time):

    python benchmarks/distill.py --budgets 3 --jobs 2

Runs made that way record `jobs: 2`; their times are not those of a machine to
themselves, so the report's time columns and frontier leave them out.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, write_doc_section  # noqa: E402

from splat3d.io.media import save_png  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "distill"
PROMPTS = ROOT / "benchmarks" / "prompts.txt"
METHODS = ("sds", "vsd", "lvsd", "l2vsd")
METRICS = ("prompt_accuracy", "iou", "colour_error", "speckle", "view_consistency", "fid", "kid")
LOWER_IS_BETTER = ("colour_error", "speckle", "fid", "kid")
# The sweep (--sweep): L2-VSD's eta and linear-term variants on a subset (seed 0, 1x budget).
# vsd is eta 0; eta 1 with the exact term is the default (configs/l2vsd.yaml) since this sweep, so "-eta1" is
# the same run as the main benchmark's l2vsd. Its first runs were at eta 0.1, the default before: "-eta0.1".
SWEEP = {
    "-eta0.001": ["guidance.lookahead_scale=0.001"],
    "-eta0.01": ["guidance.lookahead_scale=0.01"],
    "-eta0.1": ["guidance.lookahead_scale=0.1"],
    "-eta1": ["guidance.lookahead_scale=1.0"],
    "-last_layer": ["guidance.linear_term=last_layer"],
    "-finite_difference": ["guidance.linear_term=finite_difference"],
    "-eta1-finite_difference": ["guidance.lookahead_scale=1.0", "guidance.linear_term=finite_difference"],
}
SWEEP_PROMPTS = ("a blue cone", "a purple torus", "a red house", "a green mug")
# Janus mitigations (--janus): each on the fronted prompts, paired with the same method without it.
JANUS = {
    "-view": ["guidance.view_guidance_scale=45"],  # 3x the cpu preset's CFG on the view phrase alone
    # For the prior after its view stage: 2x (2D: view CFG 8 at CFG 3 drew the asked view 0.938 of the time), and
    # half, which weakens what the view phrase also carries of the fronted kinds (doors and handles on spheres)
    "-view30": ["guidance.view_guidance_scale=30"],
    "-view7.5": ["guidance.view_guidance_scale=7.5"],
    "-perpneg": ["guidance.perp_neg_side=1.5", "guidance.perp_neg_back=2.0"],
    "-esd": ["guidance.camera_guidance_scale=0.5"],
    "-perpneg-esd": ["guidance.perp_neg_side=1.5", "guidance.perp_neg_back=2.0", "guidance.camera_guidance_scale=0.5"],
}
JANUS_PROMPTS = ("a red house", "a blue house", "a green mug", "a yellow mug")
# L2-VSD's regime (--regime): LoRA learning rate x eta x budget, each l2vsd run paired with the vsd run of the
# same learning rate, budget, prompt and seed. Tags: "-lr<lr>" (vsd) and "-lr<lr>-eta<eta>" (l2vsd).
REGIME_LRS = (1e-4, 3e-4, 1e-3)
REGIME_ETAS = (0.1, 1.0)
# The linear term (--linear-term): l2vsd with the finite-difference term on every prompt and seed, paired with
# the exact term (the l2vsd runs) and with vsd, to say whether the cheaper term loses anything.
LINEAR_TAG, LINEAR_SET = "-fd", ["guidance.linear_term=finite_difference"]


def load_prompts(path: Path = PROMPTS) -> list[str]:
    return [x.strip() for x in path.read_text().splitlines() if x.strip() and not x.startswith("#")]


def run_id(method: str, budget: int, prompt: str, seed: int, tag: str = "") -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return f"{method}{tag}-x{budget}-{slug}-s{seed}"


def run_one(
    model: str,
    method: str,
    budget: int,
    prompt: str,
    seed: int,
    overrides: list[str],
    tag: str,
    results: Path,
    jobs: int = 1,
    keep_scene: bool = False,
) -> dict:
    import torch

    from splat3d.distill.priors import builtin_priors
    from splat3d.io.media import grid, save_png
    from splat3d.run.config import build_config, stretch_schedule
    from splat3d.run.trainer import start_run
    from splat3d.scene.ply import write_ply
    from splat3d.shapes.evaluate import evaluate_scene, load_classifier
    from splat3d.shapes.world import parse_prompt

    if method == "l2vsd" and not any(o.startswith("guidance.linear_term=") for o in overrides):
        # l2vsd here is the paper's method, the exact jvp, whatever linear term the cpu preset picks for
        # speed; the finite-difference term is a variant of its own (--linear-term, the sweep).
        overrides = ["guidance.linear_term=exact", *overrides]
    cfg = build_config("cpu", overrides, prompt__prompt=prompt, model=model, method=method, seed=seed)
    cfg = stretch_schedule(cfg, budget)  # densification, annealing and render sizes scale with the steps
    spec = parse_prompt(prompt)
    with tempfile.TemporaryDirectory() as tmp:
        with start_run(cfg, Path(tmp) / "run") as trainer:
            t0 = time.perf_counter()
            trainer.run()
            wall = time.perf_counter() - t0
        rows = [json.loads(x) for x in trainer.folder.metrics_path.read_text().splitlines()]
        folder = builtin_priors().get(model) or Path(model)
        reference = prior_reference_cached(trainer.prior, model, prompt, results)
        evaluation = evaluate_scene(trainer.scene, spec.colour, spec.kind, load_classifier(folder), reference)
        frames = trainer.render_views(4, 64)
    name = run_id(method, budget, prompt, seed, tag)
    if keep_scene:  # for the mesh export benchmark (benchmarks/export.py --runs accepts these files)
        (results / "scenes").mkdir(exist_ok=True)
        write_ply(trainer.scene, results / "scenes" / f"{name}.ply")
    save_png(grid(frames, columns=4), results / "frames" / f"{name}.png")
    return {
        "run": name, "method": method + tag, "budget": budget, "prompt": prompt, "seed": seed,
        "steps": cfg.steps, "overrides": overrides,
        "lookahead_scale": cfg.guidance.lookahead_scale, "linear_term": cfg.guidance.linear_term,
        **{m: getattr(evaluation, m) for m in METRICS},
        "area_ratio": evaluation.area_ratio,  # silhouette area over the truth's: size or shape?
        "views": [v["view"] for v in evaluation.per_view],  # the classifier's view of each ring camera
        "seconds_per_step": statistics.median(b["seconds"] - a["seconds"] for a, b in zip(rows, rows[1:])),
        "total_seconds": wall, "peak_memory_mb": rows[-1]["peak_memory_mb"], "gaussians": rows[-1]["n_gaussians"],
        "threads": torch.get_num_threads(), "jobs": jobs,
    }  # fmt: skip


def prior_reference_cached(prior, model: str, prompt: str, results: Path):
    """The prior's own samples of the prompt for FID/KID (evaluate.prior_reference), drawn once per prior and
    prompt and kept under results/references/ (the prior's weights' hash in the name)."""
    import hashlib

    import torch

    from splat3d.distill.priors import builtin_priors
    from splat3d.io.fileio import atomic_write
    from splat3d.shapes.evaluate import prior_reference

    folder = builtin_priors().get(model) or Path(model)
    files = sorted(folder.glob("*/*.safetensors")) + sorted(folder.glob("model_index.json"))  # weights, sampler
    if not files:
        raise SystemExit(f"FID/KID references need a local prior folder; {model} has no weights here")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()[:12]
    path = results / "references" / f"{digest}-{re.sub(r'[^a-z0-9]+', '-', prompt.lower()).strip('-')}.pt"
    if path.exists():
        return torch.load(path)
    images = prior_reference(prior, prompt)  # its views, steps and seed are the evaluator's constants
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(images, tmp))  # --jobs 2: another job may read it meanwhile
    return images


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    mean, sd = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
    digits = 0 if abs(mean) >= 100 else 3  # counts and megabytes, or scores and seconds
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def report(results_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = all_results = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    if not results:
        raise SystemExit("no results yet; run the benchmark first")
    sweep = sweep_table(results)
    janus, regime = variant_table(results, janus_reference), variant_table(results, regime_reference)
    linear = variant_table(results, lambda r: ["l2vsd", "vsd"] if r["method"] == "l2vsd" + LINEAR_TAG else None)
    results = [r for r in results if r["method"] in METHODS]
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["method"], r["budget"]), []).append(r)
    costs = ("peak_memory_mb", "gaussians")
    header = " | s/step | total s | timed runs | peak MB | Gaussians |"
    lines = ["| method | budget | runs | " + " | ".join(METRICS) + header]
    lines.append("|---|---|---|" + "---|" * (len(METRICS) + 5))
    for (method, budget), rs in sorted(groups.items(), key=lambda x: (METHODS.index(x[0][0]), x[0][1])):
        timed = [r for r in rs if alone(r)]
        cells = [mean_std([r.get(m) for r in rs]) for m in METRICS]
        cells += [mean_std([r[m] for r in timed]) for m in ("seconds_per_step", "total_seconds")] + [str(len(timed))]
        cells += [mean_std([r[m] for r in rs]) for m in costs]
        lines.append(f"| {method} | {budget}x | {len(rs)} | " + " | ".join(cells) + " |")
    paired = paired_table(results)
    budgets = budget_table(results)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.2))
    for ax, metric in zip(axes, METRICS):
        for method in sorted({m for m, _ in groups}):
            pts = sorted((statistics.mean(r["total_seconds"] for r in rs if alone(r)),
                          statistics.mean([r[metric] for r in rs if r.get(metric) is not None] or [float("nan")]))
                         for (m, _), rs in groups.items() if m == method and any(map(alone, rs)))  # fmt: skip
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_xlabel("wall-clock seconds per run")
        ax.set_title(metric)
    axes[0].legend()
    fig.tight_layout()
    print("\n".join(lines))
    picture, shown = method_grid(results, results_dir)
    if results_dir.resolve() != RESULTS:  # a trial run: do not touch the docs
        fig.savefig(results_dir / "frontier.png", dpi=100)
        if picture is not None:
            save_png(picture, results_dir / "methods.png")
        return
    if any(map(alone, results)):  # the frontier's x axis needs runs that had the machine to themselves
        fig.savefig(ROOT / "docs" / "distill_frontier.png", dpi=100)
    if picture is not None:
        save_png(picture, ROOT / "docs" / "distill_methods.png")
    write_doc_section(
        "distill",
        "## Method benchmark on the shapes world\n\n"
        f"`python benchmarks/distill.py` then `--report`, on {machine()}; {len(results)} runs, prompts in "
        "benchmarks/prompts.txt, the cpu preset for every method. Mean ± std over prompts and seeds. "
        "Times (s/step, total s, and the frontier's x axis) come only from the runs that had the machine to "
        'themselves ("timed runs"); the rest ran two at a time with one thread each (`--jobs 2`).\n\n'
        + "\n".join(lines)
        + "\n\nPaired with VSD (the same prompt, seed and budget; mean difference ± standard error over the pairs; "
        + "positive: better than VSD for accuracy, IoU and view consistency, worse for colour error, speckle, "
        + "FID and KID):\n\n"
        + paired
        + (
            "\nWhat 3x the steps buys: each method's 3x run minus its 1x run of the same prompt and seed "
            "(mean ± standard error over the pairs):\n\n" + budgets
            if budgets
            else ""
        )
        + ("\n![quality per second](distill_frontier.png)\n" if any(map(alone, results)) else "")
        + f"\nThe same prompts ({'; '.join(shown)}; seed 0, 1x budget), one row per method "
        + f"({', '.join(m for m in METHODS if any(r['method'] == m for r in results))}), 4 turntable frames each:\n\n"
        + "![turntable frames per method](distill_methods.png)\n",
    )
    if janus:
        write_doc_section(
            "distill_janus",
            "## Janus mitigations\n\n"
            f"`python benchmarks/distill.py --janus` on {machine()}: {', '.join(JANUS_PROMPTS)}, cpu preset. "
            "Each mitigation paired with the same method without it (same prompt, seed and budget; mean ± "
            "standard error of the differences). View guidance: "
            + " ".join(JANUS["-view"])
            + "; Perp-Neg: "
            + " ".join(JANUS["-perpneg"])
            + "; ESD: "
            + " ".join(JANUS["-esd"])
            + ".\n\n"
            + janus,
        )
    if linear:
        write_doc_section(
            "distill_linear",
            "## L2-VSD's linear term: finite difference against the exact jvp\n\n"
            f"`python benchmarks/distill.py --linear-term --budgets 1` on {machine()}: l2vsd with "
            + " ".join(LINEAR_SET)
            + " on every prompt and seed, paired with the exact term (the l2vsd runs above) and with vsd (mean ± "
            "standard error of the differences; positive: better for accuracy, IoU and view consistency, worse for "
            "colour error, speckle, FID and KID). The cost of each term: benchmarks/step_cost.py.\n\n" + linear,
        )
    if regime:
        references = {regime_reference(r) for r in all_results} - {None}
        runs = [r for r in all_results if regime_reference(r) or r["method"] in references]
        budgets = ",".join(str(b) for b in sorted({r["budget"] for r in runs}))
        copied = sum(1 for r in runs if r.get("copied_from"))
        write_doc_section(
            "distill_regime",
            "## L2-VSD's regime: LoRA learning rate x eta x budget\n\n"
            f"`python benchmarks/distill.py --regime --budgets {budgets}` on {machine()}: each l2vsd run paired with "
            "the vsd run of the same LoRA learning rate, budget, prompt and seed (mean ± standard error of the "
            "differences)."
            + (
                f" {copied} of the {len(runs)} runs are copies of runs made at the same settings under another name "
                "(their JSON's `copied_from` names it)."
                if copied
                else ""
            )
            + "\n\n"
            + regime,
        )
    if sweep:
        write_doc_section(
            "distill_sweep",
            "## L2-VSD's lookahead scale and linear term\n\n"
            f"`python benchmarks/distill.py --sweep` on {machine()}: {', '.join(SWEEP_PROMPTS)}; seed 0, 1x budget, "
            "cpu preset. vsd is eta 0; eta 1 / exact is the default, the l2vsd runs of the table above. "
            "Mean ± std over the prompts.\n\n" + sweep,
        )


def alone(result: dict) -> bool:
    """Whether the run had the machine to itself (not one of several --jobs): its times count."""
    return result.get("jobs", 1) == 1


def differences(pairs: list[tuple[dict, dict]]) -> list[str]:
    """Mean ± standard error of a - b over the pairs where both have the metric, for every metric."""
    cells = []
    for m in METRICS:
        d = [a[m] - b[m] for a, b in pairs if a.get(m) is not None and b.get(m) is not None]
        if not d:
            cells.append("—")
            continue
        se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0
        digits = 1 if m in ("fid", "kid") else 3
        cells.append(f"{statistics.mean(d):+.{digits}f} ± {se:.{digits}f}")
    return cells


def budget_table(results: list[dict], low: int = 1, high: int = 3) -> str:
    """Each method's high-budget run minus its low-budget run of the same prompt and seed."""
    runs = {(r["method"], r["prompt"], r["seed"], r["budget"]): r for r in results}
    lines = ["| method | pairs | " + " | ".join(f"Δ {m}" for m in METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for method in METHODS:
        pairs = [(r, runs[key]) for (m, p, s, b), r in runs.items()
                 if m == method and b == high and (key := (m, p, s, low)) in runs]  # fmt: skip
        if not pairs:
            continue
        lines.append(f"| {method} | {len(pairs)} | " + " | ".join(differences(pairs)) + " |")
    if len(lines) == 2:  # no method has both budgets
        return ""
    print("\n".join(lines))
    return "\n".join(lines) + "\n"


def paired_table(results: list[dict], reference: str = "vsd") -> str:
    """Each method minus the reference on the same (prompt, seed, budget): the spread over prompts cancels."""
    ref = {(r["prompt"], r["seed"], r["budget"]): r for r in results if r["method"] == reference}
    lines = ["| method | budget | pairs | " + " | ".join(f"Δ {m}" for m in METRICS) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]  # fmt: skip
    for method in (m for m in METHODS if m != reference):
        for budget in sorted({r["budget"] for r in results}):
            pairs = [(r, ref[key]) for r in results if r["method"] == method and r["budget"] == budget
                     and (key := (r["prompt"], r["seed"], r["budget"])) in ref]  # fmt: skip
            if not pairs:
                continue
            lines.append(f"| {method} | {budget}x | {len(pairs)} | " + " | ".join(differences(pairs)) + " |")
    print("\n".join(lines))
    return "\n".join(lines) + "\n"


def variant_table(results: list[dict], reference) -> str:
    """Each variant run paired with its reference runs (``reference(result)`` -> a method name, a list of them,
    or None) of the same prompt, seed and budget: mean ± standard error of the differences on every metric."""
    runs = {(r["method"], r["prompt"], r["seed"], r["budget"]): r for r in results}
    groups: dict[tuple, list] = {}
    for r in results:
        refs = reference(r) or []
        for ref in [refs] if isinstance(refs, str) else refs:
            if (key := (ref, r["prompt"], r["seed"], r["budget"])) in runs:
                groups.setdefault((r["method"], ref, r["budget"]), []).append((r, runs[key]))
    lines = ["| variant | against | budget | pairs | " + " | ".join(f"Δ {m}" for m in METRICS) + " |",
             "|---|---|---|---|" + "---|" * len(METRICS)]  # fmt: skip
    for (method, ref, budget), pairs in sorted(groups.items()):
        lines.append(f"| {method} | {ref} | {budget}x | {len(pairs)} | " + " | ".join(differences(pairs)) + " |")
    print("\n".join(lines))
    return "\n".join(lines) + "\n" if groups else ""


def compare_table(a_dir: Path, b_dir: Path) -> str:
    """Each run in a_dir paired with the run of the same name in b_dir (the same method, prompt, seed and
    budget, made with another prior or code): a - b on every metric, over all pairs and by prompt group.
    FID and KID compare only where both directories scored against the same prior's samples."""
    pairs = [(json.loads(f.read_text()), json.loads((b_dir / f.name).read_text()))
             for f in sorted(a_dir.glob("*.json")) if (b_dir / f.name).exists()]  # fmt: skip
    if not pairs:
        raise SystemExit(f"no run in {a_dir} has a namesake in {b_dir}")
    groups = {"all": pairs}
    for kind in ("house", "mug"):
        groups[f"{kind}s"] = [(a, b) for a, b in pairs if f" {kind}" in a["prompt"]]
    groups["other kinds"] = [(a, b) for a, b in pairs if not any(f" {k}" in a["prompt"] for k in ("house", "mug"))]
    lines = ["| runs | pairs | " + " | ".join(f"Δ {m}" for m in METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    lines += [f"| {name} | {len(g)} | " + " | ".join(differences(g)) + " |" for name, g in groups.items() if g]
    print("\n".join(lines))
    return "\n".join(lines) + "\n"


def janus_reference(r: dict):
    """A Janus variant ("l2vsd-perpneg") against the same method without the mitigation."""
    for tag in sorted(JANUS, key=len, reverse=True):  # "-perpneg-esd" before "-esd"
        if r["method"].endswith(tag):
            return r["method"][: -len(tag)]
    return None


def regime_reference(r: dict):
    """An l2vsd regime run ("l2vsd[-TAG]-lr0.001-eta1") against the vsd run of the same learning rate."""
    match = re.fullmatch(r"l2vsd(.*-lr[0-9.e+-]+?)-eta[0-9.e+-]+", r["method"])
    return f"vsd{match.group(1)}" if match else None


def sweep_table(results: list[dict]) -> str:
    rows = [r for r in results if r["prompt"] in SWEEP_PROMPTS and r["seed"] == 0 and r["budget"] == 1]
    variants = ["vsd", *(f"l2vsd{tag}" for tag in SWEEP)]
    if not any(r["method"] in variants[1:] for r in rows):  # no sweep runs (other l2vsd variants are not the sweep)
        return ""
    label = {"vsd": "vsd (eta 0)", "l2vsd-eta0.1": "l2vsd-eta0.1 (exact: the default before this sweep)",
             "l2vsd-eta1": "l2vsd-eta1 (exact: the default since this sweep)"}  # fmt: skip
    lines = ["| variant | runs | " + " | ".join(METRICS) + " | s/step |", "|---|---|" + "---|" * (len(METRICS) + 1)]
    for v in variants:
        rs = [r for r in rows if r["method"] == v]
        if rs:
            cells = [mean_std([r.get(m) for r in rs]) for m in (*METRICS, "seconds_per_step")]
            lines.append(f"| {label.get(v, v)} | {len(rs)} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return "\n".join(lines) + "\n"


def method_grid(results: list[dict], results_dir: Path, prompts: int = 4):
    """One row per method: the 4-frame turntable strips of the same prompts (seed 0, budget 1)."""
    import numpy as np
    from PIL import Image

    from splat3d.io.media import grid

    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    names = {(r["method"], r["prompt"]) for r in results if r["budget"] == 1 and r["seed"] == 0}
    chosen = [p for p in load_prompts() if all((m, p) in names for m in methods)][:prompts]
    if not chosen:
        return None, []
    strips = [np.asarray(Image.open(results_dir / "frames" / f"{run_id(m, 1, p, 0)}.png").convert("RGB"))
              for m in methods for p in chosen]  # fmt: skip
    return grid(strips, columns=len(chosen), pad=6), chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--budgets", default="1,3", help="multiples of the cpu preset's steps")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--prompts", type=int, default=0, help="use only the first N prompts (0: all)")
    parser.add_argument("--prompt", action="append", default=[], help="use only this prompt (repeatable)")
    parser.add_argument("--set", action="append", default=[], help="extra config overrides for every run")
    parser.add_argument("--tag", default="", help="suffix for the method name (sweeps)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where run results go")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("DIR_A", "DIR_B"),
                        help="pair the runs of DIR_A with DIR_B's runs of the same name; print A - B")  # fmt: skip
    parser.add_argument("--keep-scenes", action="store_true", help="also keep each final scene: RESULTS/scenes")
    parser.add_argument("--sweep", action="store_true", help="run the eta / linear-term sweep on its subset")
    parser.add_argument("--janus", action="store_true", help="each Janus mitigation on the house and mug prompts")
    names = ",".join(t[1:] for t in JANUS)
    parser.add_argument("--janus-variants", default="", help=f"with --janus, only these of {names} (default: all)")
    parser.add_argument(
        "--linear-term",
        action="store_true",
        help="l2vsd with the finite-difference linear term, paired with exact and with vsd",
    )
    parser.add_argument("--regime", action="store_true", help="LoRA lr x eta (x --budgets), l2vsd paired with vsd")
    parser.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in REGIME_LRS),
                        help="with --regime, only these LoRA learning rates")  # fmt: skip
    parser.add_argument("--etas", default=",".join(f"{eta:g}" for eta in REGIME_ETAS),
                        help="with --regime, only these lookahead scales")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side, one thread each (times not kept)")
    args = parser.parse_args()
    if args.jobs < 1:
        raise SystemExit("--jobs must be at least 1")
    unknown = {f"-{n}" for n in args.janus_variants.split(",") if n} - set(JANUS)
    if unknown:
        raise SystemExit(f"unknown Janus variant(s) {sorted(unknown)}; choose from {[t[1:] for t in JANUS]}")
    if args.report:
        report(args.results)
        return
    if args.compare:
        compare_table(*args.compare)
        return
    if args.sweep:
        args.results.mkdir(parents=True, exist_ok=True)
        for prompt in SWEEP_PROMPTS:
            for tag, overrides in SWEEP.items():
                if not (args.results / f"{run_id('l2vsd', 1, prompt, 0, tag)}.json").exists():
                    finish((args.model, "l2vsd", 1, prompt, 0, overrides, tag, args.results, 1, args.keep_scenes))
        return
    prompts = [p for p in load_prompts()[: args.prompts or None] if not args.prompt or p in args.prompt]
    if args.janus:
        prompts = [p for p in prompts if p in JANUS_PROMPTS]
    if not prompts:
        raise SystemExit(f"none of {args.prompt} is in {PROMPTS}")
    args.results.mkdir(parents=True, exist_ok=True)
    variants = [(method, args.tag, args.set) for method in args.methods.split(",")]
    if args.janus:  # every method with and without each mitigation
        chosen = [f"-{n}" for n in args.janus_variants.split(",")] if args.janus_variants else list(JANUS)
        # (ESD's camera CFG needs a LoRA: not for sds)
        variants += [(m, args.tag + tag, args.set + JANUS[tag]) for m, _, _ in variants for tag in chosen
                     if m != "sds" or "camera_guidance" not in " ".join(JANUS[tag])]  # fmt: skip
    if args.linear_term:
        variants = [("l2vsd", args.tag + LINEAR_TAG, args.set + LINEAR_SET)]
    if args.regime:
        lrs = [float(x) for x in args.lrs.split(",")]
        variants = [("vsd", f"-lr{lr:g}", [f"guidance.lora_lr={lr}"]) for lr in lrs]
        variants += [("l2vsd", f"-lr{lr:g}-eta{eta:g}", [f"guidance.lora_lr={lr}", f"guidance.lookahead_scale={eta}"])
                     for lr in lrs for eta in (float(x) for x in args.etas.split(","))]  # fmt: skip
        variants = [(m, args.tag + tag, args.set + extra) for m, tag, extra in variants]
    pending = [(args.model, method, budget, prompt, seed, overrides, tag, args.results, args.jobs, args.keep_scenes)
               for budget in (int(b) for b in args.budgets.split(","))
               for seed in (int(s) for s in args.seeds.split(","))  # a whole seed first: a cut-short benchmark
               for prompt in prompts  # still covers every prompt
               for method, tag, overrides in variants
               if not (args.results / f"{run_id(method, budget, prompt, seed, tag)}.json").exists()]  # fmt: skip
    print(f"{len(pending)} runs to go", flush=True)  # finished ones are skipped: the benchmark resumes
    if args.jobs == 1:
        for job in pending:
            finish(job)
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(args.jobs, initializer=one_thread) as pool:
        for _ in pool.imap_unordered(finish, pending):
            pass


def one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def finish(job: tuple) -> None:
    """Run one benchmark job and write its result file (the file is what marks it finished)."""
    model, method, budget, prompt, seed, overrides, tag, results, jobs, keep_scene = job
    result = run_one(model, method, budget, prompt, seed, overrides, tag, results, jobs, keep_scene)
    (results / f"{result['run']}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("run", *METRICS, "total_seconds")}), flush=True)


if __name__ == "__main__":
    main()
