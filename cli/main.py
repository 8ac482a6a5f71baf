"""The ``splat3d`` command line."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from splat3d import __version__
from splat3d.errors import Splat3dError
from splat3d.io.fileio import FolderLock, ensure_writable_dir, slug

app = typer.Typer(
    name="splat3d",
    help="Text-to-3D Gaussian splatting by score distillation (L2-VSD).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Markup off: paths, prompts, keys and values print verbatim ("run[2]/", "[red]x[/red]"); a coloured
# label goes through labelled(), never through markup in a string.
console = Console(soft_wrap=True, markup=False, highlight=False)
err_console = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)  # one message, one line


def labelled(label: str, style: str, message: str) -> Text:
    """``label`` in ``style``, then ``message`` exactly as given."""
    return Text.assemble((label, style), " ", message)


def _version(value: bool):
    if value:
        console.print(f"splat3d {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    """Text-to-3D Gaussian splatting by score distillation (L2-VSD)."""


def _show_warning(message, category, filename, lineno, file=None, line=None):
    err_console.print(labelled("warning:", "yellow", str(message)))


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    warnings.showwarning = _show_warning
    try:
        app(args=_optional_ray_value(sys.argv[1:]))
    except Splat3dError as e:
        err_console.print(labelled("error:", "red", str(e)))
        sys.exit(2)
    except OSError as e:  # a file the library did not expect to fail (permissions, a vanished path)
        where = f" {e.filename}" if e.filename else ""
        err_console.print(labelled("error:", "red", f"Cannot access{where} ({e.strerror or e}); check the path."))
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


@app.command()
def info(scene: Path = typer.Argument(..., help="A 3DGS .ply file.")):
    """Print a scene's Gaussian count, SH degree, bounds and statistics."""
    import torch

    from splat3d.scene.ply import read_ply

    s = read_ply(scene)
    table = Table(title=str(scene), show_header=False, title_justify="left")
    table.add_row("Gaussians", f"{len(s):,}")
    table.add_row("SH degree", str(s.sh_degree))
    table.add_row("file size", f"{scene.stat().st_size / 1e6:.2f} MB")
    if len(s):
        with torch.no_grad():
            lo, hi = s.means.min(0).values, s.means.max(0).values
            table.add_row("bounds min", "  ".join(f"{v:+.3f}" for v in lo.tolist()))
            table.add_row("bounds max", "  ".join(f"{v:+.3f}" for v in hi.tolist()))

            def stats(t):
                q = torch.quantile(t.double(), torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
                return f"min {q[0]:.4g}  median {q[1]:.4g}  mean {t.mean():.4g}  max {q[2]:.4g}"

            table.add_row("opacity", stats(s.opacities))
            table.add_row("scale (largest axis)", stats(s.scales.max(dim=1).values))
    console.print(table)


@app.command()
def render(
    scene: Path = typer.Argument(..., help="A 3DGS .ply file, a checkpoint, or a run folder."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Folder for the PNGs (and video); RUN/renders for a run."
    ),
    cameras: Path | None = typer.Option(None, "--cameras", help="Cameras JSON file."),
    orbit: int | None = typer.Option(None, "--orbit", help="Render N views on a circle around the origin."),
    elevation: float = typer.Option(20.0, help="Orbit elevation in degrees."),
    radius: float | None = typer.Option(None, help="Orbit radius; default fits the scene."),
    fovy: float = typer.Option(40.0, help="Orbit vertical field of view in degrees."),
    size: str | None = typer.Option(None, "--size", help="WIDTHxHEIGHT; default 256x256 or the cameras' own."),
    video: bool = typer.Option(False, "--video", help="Also write a turntable video (mp4, or GIF)."),
    background: str = typer.Option("white", help="white, black, or R,G,B in [0, 1]."),
    sh_degree: int | None = typer.Option(None, help="SH degree to evaluate (default: the scene's)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    fps: int = typer.Option(24, help="Video frames per second."),
):
    """Render a scene to one PNG per view, and optionally a turntable video."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from splat3d.io.media import save_png, save_video, to_uint8
    from splat3d.render import resolve_device
    from splat3d.render.cameras import framing_radius, load_cameras_json, parse_size, turntable
    from splat3d.render.rasterize import render as render_scene
    from splat3d.run.folder import RunFolder, load_scene

    if scene.is_dir() and cameras is None and orbit is None:
        orbit = 48  # a run folder: its turntable
    if (cameras is None) == (orbit is None):
        raise Splat3dError("Give exactly one of --cameras FILE or --orbit N to say where to render from.")
    if out is None:
        if not scene.is_dir():
            raise Splat3dError("Say where to write the views with --out DIR.")
        out = RunFolder(scene).renders_dir
    if orbit is not None and not 1 <= orbit <= 10000:
        raise Splat3dError(f"--orbit {orbit} is out of range; ask for 1 to 10000 views.")
    if not 0.0 < fovy < 180.0:
        raise Splat3dError(f"--fovy {fovy} is out of range; give degrees between 0 and 180.")
    if radius is not None and radius <= 0:
        raise Splat3dError(f"--radius {radius} must be positive.")
    bg = _parse_background(background)
    dev = resolve_device(device)
    wh = parse_size(size) if size else None
    s = load_scene(scene)
    if sh_degree is not None and not 0 <= sh_degree <= s.sh_degree:
        raise Splat3dError(f"--sh-degree {sh_degree} is out of range; {scene} has SH degree {s.sh_degree}.")
    if cameras is not None:
        cams = load_cameras_json(cameras)
        if wh:
            cams = cams.resized(*wh)
    else:
        w, h = wh or (256, 256)
        cams = turntable(orbit, elevation, radius or framing_radius(s, fovy), fovy, w, h)
    ensure_writable_dir(out)

    s = s.to(dev)
    frames = []
    columns = (TextColumn("rendering"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as progress, torch.no_grad():
        task = progress.add_task("render", total=len(cams))
        for i in range(len(cams)):
            image = render_scene(s, cams[i].to(dev), bg, sh_degree=sh_degree).images[0]
            frame = to_uint8(image)
            save_png(frame, out / f"view_{i:03d}.png")
            frames.append(frame)
            progress.advance(task)
    console.print(f"wrote {len(frames)} views of {len(s):,} Gaussians to {out}/view_*.png")
    if video:
        path = save_video(frames, out / "turntable.mp4", fps=fps)
        console.print(f"wrote {path}")


def _parse_background(text: str):
    named = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
    if text in named:
        return named[text]
    try:
        rgb = tuple(float(v) for v in text.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0.0 <= v <= 1.0 for v in rgb):
        raise Splat3dError(f"Background {text!r} is not valid; use white, black, or R,G,B in [0, 1].")
    return rgb


@app.command()
def demo(
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="Folder for the scene and pictures."),
    views: int = typer.Option(24, help="Number of turntable views."),
    size: str = typer.Option("256x256", help="WIDTHxHEIGHT of the views."),
):
    """Build the built-in demo scene, save it as PLY and render a turntable."""
    from splat3d.apps.demo import save_demo
    from splat3d.render.cameras import parse_size

    parse_size(size)
    ensure_writable_dir(out)
    path, count = save_demo(out)
    console.print(f"wrote {path} ({count:,} Gaussians)")
    render(
        scene=path, out=out, cameras=None, orbit=views, elevation=20.0, radius=None,
        fovy=40.0, size=size, video=True, background="white", sh_degree=None, device="auto", fps=24,
    )  # fmt: skip


@app.command()
def generate(
    prompt: Optional[str] = typer.Argument(None, help='What to generate, e.g. "a red cube".'),
    method: Optional[str] = typer.Option(None, help="l2vsd (default), vsd, lvsd or sds."),
    model: Optional[str] = typer.Option(None, help="Built-in prior name, local diffusers folder, or hub id."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="A preset name or YAML file."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a setting: KEY=VALUE (repeatable)."),
    steps: Optional[int] = typer.Option(None, help="Number of steps."),
    budget: Optional[float] = typer.Option(
        None,
        help="Stretch the run (--steps included) and its whole schedule (densification, annealing, render sizes) "
        "this many times; the Gaussians' learning rates shrink as much, so they travel as far in smaller steps.",
    ),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this .ply scene."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/<prompt>)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    viewer: bool = typer.Option(False, "--viewer", help="Watch the splats grow in the browser."),
    port: int = typer.Option(8080, "--port", help="Port of the --viewer."),
):
    """Generate a 3D Gaussian splat scene from a text prompt."""
    from splat3d.distill.priors import CPU_DEFAULT_MODEL
    from splat3d.run.config import build_config, schedule_problems, stretch_schedule
    from splat3d.run.trainer import resume_run, start_run

    if resume is not None:
        given = (prompt, config, set_, method, model, init, overwrite, out)
        if any(given) or seed is not None or budget is not None:
            raise Splat3dError(
                "--resume continues a run as it was configured; pass only --resume DIR (and --steps, --device)."
            )
        opened = resume_run(resume, steps=steps, device=device)
    else:
        if prompt is None and config is None:
            raise Splat3dError('Give a prompt, e.g. splat3d generate "a red cube" (or --config RUN/config.yaml).')
        cfg = build_config(
            config, set_, prompt__prompt=prompt, method=method, model=model, steps=steps, seed=seed,
            device=device, init__kind="ply" if init else None, init__path=str(init) if init else None,
        )  # fmt: skip
        if budget is not None:
            cfg = stretch_schedule(cfg, budget)
            if problems := schedule_problems(cfg):
                raise Splat3dError(f"--budget {budget:g} leaves a schedule that cannot work: {problems[0]}.")
        if model is None and cfg.model == CPU_DEFAULT_MODEL:
            err_console.print(
                "No CUDA GPU: using the built-in shapes prior (6 colours x 8 objects, offline); "
                "choose another model with --model (a hub id or a local diffusers folder)."
            )
        opened = start_run(cfg, out or Path("runs") / slug(cfg.prompt.prompt), overwrite)
    with opened as trainer:  # the run folder is locked until the run ends
        _train(trainer, quiet, viewer, port)


def _train(trainer, quiet: bool, viewer: bool, port: int) -> None:
    """Run a trainer to its last step with a progress bar (and the live view)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from splat3d.run.trainer import NonFiniteRun, RunInterrupted

    cfg, run_dir = trainer.config, trainer.out
    if not quiet:
        err_console.print(f'splat3d {cfg.method} · {cfg.model} · {trainer.device} · "{cfg.prompt.prompt}" -> {run_dir}')
    columns = (
        TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[rate]:>6} it/s"),
        TimeRemainingColumn(), TextColumn("loss {task.fields[loss]:.4g}  {task.fields[gaussians]:,} Gaussians"),
    )  # fmt: skip
    live = None
    if viewer:
        from splat3d.apps.viewer import LiveViewer, SplatViewer

        live = LiveViewer(SplatViewer("127.0.0.1", port))
        err_console.print(f"live view at {live.viewer.url}")
    with Progress(*columns, console=err_console, disable=quiet, transient=False) as progress:
        task = progress.add_task("generate", total=cfg.steps, completed=trainer.step, loss=float("nan"),
                                 gaussians=len(trainer.scene), rate="-")  # fmt: skip
        started, first = time.perf_counter(), trainer.step

        def on_step(step, logs):
            rate = (step - first) / max(time.perf_counter() - started, 1e-9)
            progress.update(task, completed=step, loss=logs["loss"], gaussians=logs["n_gaussians"],
                            rate=f"{rate:.2f}")  # fmt: skip
            if live:
                live.offer(trainer.scene, f"**{cfg.prompt.prompt}**  \nstep {step}/{cfg.steps} · "
                                          f"{logs['n_gaussians']:,} Gaussians")  # fmt: skip

        try:
            trainer.run(on_step=on_step)
        except RunInterrupted as e:
            progress.stop()
            err_console.print(str(e))
            raise typer.Exit(130) from None
        except NonFiniteRun as e:
            progress.stop()
            err_console.print(labelled("error:", "red", str(e)))
            raise typer.Exit(1) from None
        finally:
            if live:
                live.close()
                live.viewer.close()
    console.print(f"wrote {trainer.folder.scene_path} ({len(trainer.scene):,} Gaussians) and its pictures in {run_dir}")


def _ray_address_like(token: str) -> bool:
    return token == "auto" or token.startswith("ray://") or (":" in token and not Path(token).exists())


def _optional_ray_value(argv: list[str]) -> list[str]:
    """``--ray`` takes an optional ADDRESS: alone (or before a non-address) it means a local instance."""
    out = []
    for i, token in enumerate(argv):
        if token == "--ray" and not (i + 1 < len(argv) and _ray_address_like(argv[i + 1])):
            token = "--ray=local"
        out.append(token)
    return out


@app.command()
def batch(
    prompts: Path = typer.Argument(..., help="One prompt per line (.txt), or one JSON object per line (.jsonl)."),
    out: Path = typer.Option(..., "--out", "-o", help="Batch folder: one run folder per prompt, summaries."),
    method: Optional[str] = typer.Option(None, help="Default method (a .jsonl line can override it)."),
    model: Optional[str] = typer.Option(None, help="Default model."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="A preset name or YAML file for every run."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a setting for every run: KEY=VALUE."),
    steps: Optional[int] = typer.Option(None, help="Steps per run."),
    seed: Optional[int] = typer.Option(None, help="Default seed."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda."),
    workers: int = typer.Option(1, "--workers", "-w", help="Runs at once (processes, or Ray tasks of a local Ray)."),
    ray: Optional[str] = typer.Option(
        None,
        "--ray",
        metavar="[ADDRESS]",
        help="Run one Ray task per prompt. Alone: a local Ray instance; with an address (auto, HOST:PORT, "
        "ray://HOST:PORT): join that cluster. OUT must be a path every node shares.",
    ),
    cpus_per_task: float = typer.Option(1.0, "--cpus-per-task", help="CPUs per run (also its torch threads)."),
    gpus_per_task: float = typer.Option(0.0, "--gpus-per-task", help="GPUs per Ray task."),
    retries: int = typer.Option(2, "--retries", help="Times a failed run is retried before it is reported."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No overview."),
):
    """Generate many prompts: one run folder each, resumable, here or on a Ray cluster."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from splat3d.apps.batch import Backend, Job, read_jobs, read_status, run_batch
    from splat3d.run.trainer import RunInterrupted

    backend = Backend(
        kind="local" if ray is None else "ray", workers=workers, ray_address=None if ray in (None, "local") else ray,
        cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task, retries=retries,
    )  # fmt: skip
    defaults = Job(prompt="", method=method, model=model, seed=seed, steps=steps, sets=list(set_ or []),
                   config=config, device=device)  # fmt: skip
    jobs = read_jobs(prompts, defaults)
    ensure_writable_dir(out)
    where = "here" if ray is None else ("on a local Ray instance" if ray == "local" else f"on Ray at {ray}")
    progress = Progress(TextColumn("batch"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[counts]}"),
                        console=err_console, disable=quiet)  # fmt: skip
    task = progress.add_task("batch", total=len(jobs), counts="")

    def on_update(state, message):
        c = state.counts()
        eta = state.eta()
        text = f"done {c['done']} · running {c['running']} · failed {c['failed']} · remaining {c['remaining']}"
        if eta is not None:
            text += f" · ETA {int(eta // 60)}m{int(eta % 60):02d}s"
        progress.update(task, completed=c["done"] + c["failed"], counts=text)
        if message:
            progress.console.print(Text(message, style="red"))

    if not quiet:
        skipped = sum((read_status(out / j.name) or {}).get("status") == "done" for j in jobs)
        err_console.print(f"splat3d batch: {len(jobs)} prompts ({skipped} done earlier) -> {out}, {where}")
    try:
        with progress:
            state = run_batch(jobs, out, backend, on_update)
    except (RunInterrupted, KeyboardInterrupt):
        err_console.print("interrupted; finished runs are kept and partial runs checkpointed. Run the same command "
                          "again to resume: finished prompts are skipped.")  # fmt: skip
        raise typer.Exit(130) from None
    c = state.counts()
    console.print(f"{c['done']} done, {c['failed']} failed of {len(jobs)}; wrote {out / 'summary.csv'}, "
                  f"{out / 'summary.md'} and {out / 'index.html'}")  # fmt: skip
    if c["failed"]:
        raise typer.Exit(1)


config_app = typer.Typer(help="Show configuration presets.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(preset: Optional[str] = typer.Argument(None, help="A preset name or YAML file.")):
    """Print the fully resolved configuration (defaults, or a preset applied)."""
    from splat3d.run.config import build_config, presets, to_yaml

    typer.echo(to_yaml(build_config(preset)), nl=False)
    if preset is None:
        err_console.print(f"presets: {', '.join(presets())}")


@app.command()
def export(
    source: Path = typer.Argument(..., help="A run folder, a checkpoint (.pt) or a scene (.ply, .glb, .spz)."),
    out: Path = typer.Option(..., "--out", "-o", help="The file to write."),
    format: Optional[str] = typer.Option(
        None,
        "--format",
        help="Splats: ply (INRIA layout), splat (antimatter15), ply_compressed (SuperSplat), glb (glTF "
        "KHR_gaussian_splatting), spz (Niantic). Or mesh: a coloured triangle mesh (.glb, .obj or .ply). "
        "Default: from --out's extension (.ply, .splat, .glb, .spz; .obj is a mesh).",
    ),
    sh_degree: Optional[int] = typer.Option(None, "--sh-degree", help="Pad or truncate SH to this degree (0..3)."),
    up: Optional[str] = typer.Option(
        None, "--up", help="Up axis the viewer expects: +z (splat3d), +y or -y. Default: +y for .glb (glTF's), else +z."
    ),
    mesh_format: Optional[str] = typer.Option(
        None, "--mesh-format", help="glb, obj or ply; default: --out's extension."
    ),
    resolution: int = typer.Option(
        128,
        "--resolution",
        help="Mesh: grid cells along the longest side (32..512). Higher keeps finer detail; time grows with its "
        "cube and the number of faces with its square (128: about 100k faces for an object).",
    ),
    threshold: float = typer.Option(
        0.5,
        "--threshold",
        help="Mesh: rendered opacity that counts as surface (0..1). Lower takes in faint, hazy Gaussians (fuller, "
        "more floaters); higher keeps the opaque core (thinner, holes where the scene is thin).",
    ),
    depth_tolerance: float = typer.Option(
        6.0,
        "--depth-tolerance",
        help="Mesh: cells behind the depth each carving view sees that it leaves solid (>= 0). More: the mesh "
        "fills the splats' rendered silhouette; less: it stays nearer the Gaussians' centres (a thinner mesh, "
        "closer to the solid under a hazy shell).",
    ),
    faces: int = typer.Option(0, "--faces", help="Mesh: decimate to about this many faces; 0 keeps them all."),
    preview: Optional[Path] = typer.Option(
        None, "--preview", help="Mesh: also write a PNG of the splats (top) over the mesh (bottom), 4 views."
    ),
):
    """Write a scene for other viewers and tools (see the README for which viewer expects what)."""
    from splat3d.errors import Splat3dError
    from splat3d.scene.export import BY_EXTENSION, FORMATS

    fmt = format or BY_EXTENSION.get(out.suffix.lower())
    if fmt is None:
        raise Splat3dError(f"Cannot tell the format from {out.name!r}; give --format ({', '.join(FORMATS)} or mesh).")
    if fmt not in (*FORMATS, "mesh"):
        raise Splat3dError(f"Unknown format {fmt!r}; choose one of {', '.join(FORMATS)} or mesh.")
    up = up or ("+y" if out.suffix.lower() == ".glb" else "+z")
    if fmt == "mesh":
        from splat3d.render.mesh import MESH_FORMATS, MeshConfig, export_mesh

        kind = (mesh_format or out.suffix.lstrip(".")).lower()
        if f".{kind}" not in MESH_FORMATS or out.suffix.lower() != f".{kind}":
            raise Splat3dError(
                f"A mesh is written as {', '.join(MESH_FORMATS)}, named to match; {out.name!r} "
                f"{'does not end in .' + kind if f'.{kind}' in MESH_FORMATS else 'has another extension'}."
            )
        # MeshConfig checks them before any work
        config = MeshConfig(resolution=resolution, threshold=threshold, depth_tolerance=depth_tolerance, faces=faces)
    from splat3d.run.folder import load_scene
    from splat3d.scene.export import export_scene

    if preview is not None and (fmt != "mesh" or preview.suffix.lower() != ".png"):
        raise Splat3dError("--preview writes a .png beside a mesh export (--format mesh).")
    scene = load_scene(source)
    ensure_writable_dir(out.parent)
    if preview is not None:
        ensure_writable_dir(preview.parent)
    if fmt == "mesh":
        with console.status(f"meshing {len(scene):,} Gaussians at resolution {resolution}"):
            mesh = export_mesh(scene, out, config, up)
        if preview is not None:
            from splat3d.io.media import save_png
            from splat3d.render.mesh import comparison_picture

            save_png(comparison_picture(scene, mesh), preview)
            console.print(f"wrote {preview}")
        watertight = "watertight" if mesh.is_watertight else "not watertight"
        console.print(
            f"wrote {out} ({len(mesh.faces):,} faces, {len(mesh.vertices):,} vertices, {watertight}, up {up})"
        )
        return
    n = export_scene(scene, out, fmt, sh_degree, up)
    console.print(f"wrote {out} ({n:,} Gaussians, {fmt}, up {up})")


@app.command()
def view(
    source: Path = typer.Argument(..., help="A .ply scene, a checkpoint, or a run folder."),
    port: int = typer.Option(8080, "--port", help="Port to serve on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback exposes the view."),
):
    """Serve an interactive 3D view of the Gaussians in the browser (Ctrl-C stops)."""
    from splat3d.apps.viewer import LOOPBACK, SplatViewer
    from splat3d.run.folder import RunFolder, load_scene

    if not 0 < port < 65536:
        raise Splat3dError(f"--port {port} is out of range; choose 1..65535.")
    scene = load_scene(source)
    status = f"{len(scene):,} Gaussians"
    run = RunFolder(source)
    if run.is_run():
        from splat3d.run.config import build_config

        cfg = build_config(str(run.config_path))
        status = f"**{cfg.prompt.prompt}**  \nstep {run.last_step()}/{cfg.steps} · {len(scene):,} Gaussians"
    if host not in LOOPBACK:
        exposed = f"binding to {host} makes the view reachable from other machines."
        err_console.print(labelled("warning:", "yellow", exposed))
    try:
        viewer = SplatViewer(host, port)  # viser moves to the next free port if this one is taken
    except OSError as e:
        raise Splat3dError(f"Cannot serve on {host}:{port} ({e.strerror or e}); choose another --port.") from None
    viewer.show(scene, status)
    typer.echo(f"viewing {source} at {viewer.url} (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.close()
    console.print("stopped")


@app.command("eval")
def eval_run(
    run: Path = typer.Argument(..., help="A run folder made with the shapes prior."),
    distribution: bool = typer.Option(
        True, "--fid/--no-fid", help="Also FID and KID against 32 of the prior's own samples (sampled here)."
    ),
):
    """Score a run against the shapes world's truth: prompt accuracy, IoU, colour error, speckle, view
    consistency, and FID/KID against the prior's own images of the prompt."""
    from splat3d.run.folder import RunFolder
    from splat3d.shapes.evaluate import evaluate_run

    with console.status("evaluating (FID/KID: sampling the prior)" if distribution else "evaluating"):
        result = evaluate_run(run, distribution=distribution)
    table = Table(title=f"{run}: {result.colour} {result.kind}", title_justify="left")
    for column in ("azimuth", "colour", "kind", "view seen", "camera view", "IoU"):
        table.add_column(column)
    for v in result.per_view:
        table.add_row(f"{v['azimuth']:.0f}°", v["colour"], v["kind"], v["view"], v["true_view"], f"{v['iou']:.3f}")
    console.print(table)
    views = len(result.per_view)
    console.print(
        f"prompt accuracy {result.prompt_accuracy:.3f} ({round(result.prompt_accuracy * views)}/{views} views), "
        f"IoU {result.iou:.3f} (area {result.area_ratio:.2f}x the true one), "
        f"colour error {result.colour_error:.3f}, speckle {result.speckle:.3f}"
        + (f", view consistency {result.view_consistency:.3f}" if result.view_consistency is not None else "")
        + (f", FID {result.fid:.3g}, KID {result.kid:.3g}" if result.fid is not None else "")
    )
    console.print(f"wrote {RunFolder(run).eval_path}")


prior_app = typer.Typer(help="Train and sample diffusion priors.", no_args_is_help=True)
app.add_typer(prior_app, name="prior")


@prior_app.command("train")
def prior_train(
    world: str = typer.Argument("shapes", help="The world to train on (shapes)."),
    out: Path = typer.Option(..., "--out", "-o", help="Training folder: dataset cache, checkpoints, prior/."),
    steps: Optional[int] = typer.Option(
        None, help="UNet training steps (default: the version's; it resumes from the folder's last checkpoint)."
    ),
    version: int = typer.Option(
        2, "--version", help="2: the shipped 64-px latent prior; 1: the earlier 32-px pixel prior."
    ),
    batch_size: int = typer.Option(64, help="Images per step."),
    seed: int = typer.Option(0, help="Seed of the dataset, the initial weights and the batches."),
    checkpoint_every: int = typer.Option(250, help="Steps between checkpoints."),
    view_steps: Optional[int] = typer.Option(
        None, help="Steps of the last, view-weighted stage (default: the version's)."
    ),
    view_kinds: Optional[str] = typer.Option(
        None, help="Kinds the view stage draws from, their view named: fronted (house, mug; the default) or all."
    ),
    view_share: Optional[float] = typer.Option(
        None, help="Share of each view-stage batch drawn as --view-kinds says (default 0.5)."
    ),
    view_fronted_weight: Optional[float] = typer.Option(
        None, help="With --view-kinds all: how much more often a kind with a front is drawn (default 1)."
    ),
    view_front_weight: Optional[float] = typer.Option(
        None, help="How much more often the view stage draws a house or mug front than each other view (default 1)."
    ),
    vae_detail_weight: Optional[float] = typer.Option(
        None,
        help="Latent priors: extra weight of the autoencoder's error on the door, window and roof-edge pixels (0: "
        "plain L1, version 2's recipe; 20 kept every house's door, docs/shapes.md).",
    ),
    camera: Optional[bool] = typer.Option(
        None,
        "--camera/--no-camera",
        help="The UNet also takes the camera (added to its time embedding, as MVDream does); the view stage's "
        "drawn images then learn their view from it, captioned without a view phrase (default: the version's).",
    ),
    camera_lr: Optional[float] = typer.Option(
        None, help="With --camera: the learning rate of the new camera embedding (default 3e-3; the UNet's is 3e-4)."
    ),
    camera_tokens: Optional[bool] = typer.Option(
        None,
        "--camera-tokens/--camera-embedding",
        help="With --camera: the camera enters as extra cross-attention tokens (as Zero-1-to-3's pose) instead of "
        "through the time embedding (default: the embedding).",
    ),
    start_from: Optional[str] = typer.Option(
        None,
        "--from",
        help="Start a new folder from an exported prior (a prior/ folder, or a built-in name such "
        "as shapes), its stages counted as done: --from shapes --view-steps N trains only the view stage.",
    ),
    init_from: Optional[str] = typer.Option(
        None,
        "--init-from",
        help="Start a new folder's weights from an exported prior (a prior/ folder or a built-in name) and run "
        "every stage from them: fine-tuning, e.g. --init-from shapes --vae-detail-weight 20 --vae-steps 500 "
        "--steps 1500 retrains the shipped prior's autoencoder and UNet in about an hour on 2 cores.",
    ),
    vae_steps: Optional[int] = typer.Option(
        None, help="Latent priors: autoencoder steps before the UNet's (default: the version's)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Train the built-in prior of a world from a seed (resumable); writes OUT/prior."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from splat3d.shapes.train_prior import VERSIONS, PriorTrainConfig, PriorTrainer

    if world != "shapes":
        raise Splat3dError(f"Unknown world {world!r}; the built-in world is shapes.")
    if version not in VERSIONS:
        raise Splat3dError(f"Unknown prior version {version}; choose {' or '.join(map(str, VERSIONS))}.")
    settings = {**VERSIONS[version], **({"steps": steps} if steps is not None else {})}
    given = {"view_steps": view_steps, "view_kinds": view_kinds, "view_batch_share": view_share,
             "view_fronted_weight": view_fronted_weight, "view_front_weight": view_front_weight,
             "camera_condition": camera, "vae_detail_weight": vae_detail_weight,
             "camera_lr": camera_lr, "camera_tokens": camera_tokens, "vae_steps": vae_steps}  # fmt: skip
    settings.update({k: v for k, v in given.items() if v is not None})
    cfg = PriorTrainConfig(batch_size=batch_size, seed=seed, checkpoint_every=checkpoint_every, **settings)
    from splat3d.distill.priors import builtin_priors

    def prior_folder(option: str, name: Optional[str]) -> Optional[Path]:
        if name is None:
            return None
        folder = builtin_priors().get(name, Path(name))
        if not folder.is_dir():
            raise Splat3dError(f"{option} {name}: no such folder or built-in prior; give a prior/ folder "
                               f"or one of: {', '.join(builtin_priors())}.")  # fmt: skip
        return folder

    start_from, init_from = prior_folder("--from", start_from), prior_folder("--init-from", init_from)
    ensure_writable_dir(out)
    columns = (TextColumn("train"), MofNCompleteColumn(), BarColumn(), TimeRemainingColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"))  # fmt: skip
    with FolderLock(out, "splat3d prior train"):
        trainer = PriorTrainer(cfg, out, log=lambda m: err_console.print(m), start_from=start_from,
                               init_from=init_from)  # fmt: skip
        with Progress(*columns, console=err_console, disable=quiet) as progress:
            task = progress.add_task("train", total=trainer.total_steps, completed=trainer.total_step,
                                     loss=float("nan"))  # fmt: skip
            folder = trainer.run(on_step=lambda step, loss: progress.update(task, completed=step, loss=loss))
    console.print(f"wrote the prior to {folder} ({trainer.step} steps); use it with --model {folder}")


@prior_app.command("sample")
def prior_sample(
    prompt: str = typer.Argument(..., help='What to draw, e.g. "a red cube, side view".'),
    model: str = typer.Option("shapes", help="Built-in prior name, local diffusers folder, or hub id."),
    n: int = typer.Option(8, "--n", help="Number of samples."),
    out: Path = typer.Option(Path("samples.png"), "--out", "-o", help="The grid PNG to write."),
    steps: int = typer.Option(50, help="DDIM steps."),
    guidance_scale: Optional[float] = typer.Option(
        None, help="Classifier-free guidance scale (default: what the prior recommends; 7.5 if it says nothing)."
    ),
    eta: Optional[float] = typer.Option(
        None, help="DDIM eta: 0 deterministic, 1 stochastic (default: what the prior recommends; 0 if it says nothing)."
    ),
    view_guidance_scale: Optional[float] = typer.Option(
        None,
        help='CFG scale of a view phrase (", front view") apart from the object (default: what the prior '
        "recommends; none: plain CFG).",
    ),
    camera_guidance_scale: Optional[float] = typer.Option(
        None,
        help="For a prior that takes cameras: CFG scale of the camera of the prompt's view phrase apart from the "
        "prompt (default: plain CFG; a prompt without a view phrase has no camera to guide).",
    ),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
):
    """Sample a prior in 2D (DDIM with CFG) to check a prompt before distilling it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from splat3d.distill.priors import load_prior
    from splat3d.distill.sample import check_sampling, sample_images
    from splat3d.io.media import grid, save_png, to_uint8
    from splat3d.render import resolve_device

    if not 1 <= n <= 256:
        raise Splat3dError(f"--n must be 1..256, not {n}.")
    check_sampling([prompt] * n, steps, eta, camera_guidance_scale)  # before the model loads
    ensure_writable_dir(out.parent)
    prior = load_prior(model, resolve_device(device))
    with Progress(TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), console=err_console) as progress:
        task = progress.add_task("sample", total=steps)
        scale = prior.sample_guidance_scale if guidance_scale is None else guidance_scale
        images = sample_images(prior, [prompt] * n, steps, scale, seed, eta=eta,
                               progress=lambda: progress.advance(task),
                               view_guidance_scale=view_guidance_scale,
                               camera_guidance_scale=camera_guidance_scale)  # fmt: skip
    save_png(grid([to_uint8(img) for img in images], columns=min(n, 8)), out)
    console.print(f"wrote {out} ({n} samples of {prompt!r} from {model})")


if __name__ == "__main__":
    main()
