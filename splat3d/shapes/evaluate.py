"""The shapes world's evaluator: does a 3D result show the prompted object?

A small CNN, trained on the world's renders (the prior's dataset) and shipped
with the prior, judges colour, kind and view (front/side/back/overhead) of a
render at the prior's resolution (64 px; 32 for the first prior). ``evaluate_scene``
renders a result at 128 px from a fixed ring of twelve views and reports:

- prompt accuracy: the fraction of views where colour and kind are right;
- agreement with the true object on the same views: alpha-mask IoU, the
  mean absolute colour error inside both masks, and speckle: the share of
  those pixels whose colour is far from the truth's (SPECKLE_THRESHOLD);
- area ratio: the result's silhouette area over the true one's, summed over
  the ring (1.0: the right size; above 1 too large). It says whether a low
  IoU is a size error or a shape error;
- view consistency (objects with a front): the fraction of views where "the
  front is seen" agrees with "the camera is in front" (azimuth within the
  prompt processor's front threshold). A Janus object, with a front on
  several sides, scores low;
- FID and KID (the L2-VSD paper's measure of a distribution match), given the
  prior's own 2D samples of the prompt: renders from a 32-view ring against
  as many samples, the prompt phrased with each ring view's word, compared in
  the classifier's feature space (the input of its heads, as FID uses the
  input of Inception's logits). KID, unbiased, is the one to trust at 32
  samples; FID is biased upward at small counts.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from splat3d.distill.prompts import VIEWS, PromptConfig, view_names
from splat3d.render import render
from splat3d.render.cameras import orbit_cameras
from splat3d.scene import GaussianScene
from splat3d.shapes.world import COLOURS, FRONTED, KINDS, make_object

RING_ELEVATION = 15.0
RING_RADIUS = 2.9
RING_FOVY = 41.5
# Twelve views, every 30° from the front: none lies on a view boundary (45° and 135° from the front,
# the prompt processor's thresholds), so each has one right answer, 15° or more from the next view.
RING_VIEWS = 12
EVAL_SIZE = 128  # pixels of the evaluation renders (IoU, colour error, speckle); the classifier resizes
# Speckle: the share of foreground pixels whose colour is far from the true object's at the same pixel,
# "far" meaning more than 0.25 (64 of 255) in some channel: a dot of another colour, not shading noise
# (the renders of two samplings of the same true object differ by under 0.1). Pixels within 2 px (at
# 128 px) of either silhouette's edge are left out, so a rim a pixel off is not counted as speckle.
SPECKLE_THRESHOLD = 0.25
SPECKLE_EDGE = 2
DISTRIBUTION_VIEWS = 32  # ring views (and prior samples) for FID and KID


class ShapesClassifier(torch.nn.Module):
    """Colour, kind and view logits for [B, 3, H, W] renders in [0, 1], judged at ``input_size``.

    Renders of another size are resized (antialiased) first. The view needs where things are (the
    door on the wall, the side the handle is on), so the last feature map is pooled to 4x4, not 1x1.
    """

    def __init__(self, width: int = 16, input_size: int = 64):
        super().__init__()
        c, self.width, self.input_size = width, width, input_size
        layers, channels = [], 3
        for out in (c, 2 * c, 4 * c, 4 * c)[: 3 if input_size <= 32 else 4]:
            layers += [torch.nn.Conv2d(channels, out, 3, padding=1), torch.nn.GELU(), torch.nn.MaxPool2d(2)]
            channels = out
        pooled = 2 if input_size <= 32 else 4  # 32 px: the first evaluator's layout (its weights still load)
        self.features = torch.nn.Sequential(*layers[:-1], torch.nn.AdaptiveAvgPool2d(pooled), torch.nn.Flatten())
        features = channels * pooled * pooled
        self.colour = torch.nn.Linear(features, len(COLOURS))
        self.kind = torch.nn.Linear(features, len(KINDS))
        self.view = torch.nn.Linear(features, len(VIEWS))

    def embed(self, images: Tensor) -> Tensor:
        """What the heads see: [B, features] (also FID's and KID's feature space)."""
        size = (self.input_size, self.input_size)
        if images.shape[-2:] != size:
            images = F.interpolate(images, size, mode="bilinear", align_corners=False, antialias=True)
        return self.features(images * 2 - 1)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        h = self.embed(images)
        return {"colour": self.colour(h), "kind": self.kind(h), "view": self.view(h)}


class ClassifierFeatures(torch.nn.Module):
    """The feature space of FID and KID: what the classifier's heads see (its last convolution pooled to
    4x4 and flattened), as FID uses what Inception's logits see. Measured on the 32-px prior's samples of
    "a red house": with the spatial layout kept, the true red house is nearer than a true red cube, a red
    mug or a blue house; averaged over the image, the cube was nearer than the house (colour dominated)."""

    def __init__(self, classifier: ShapesClassifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.colour.in_features

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.embed(images)


@torch.no_grad()
def distribution_distance(ours: Tensor, reference: Tensor, classifier: ShapesClassifier) -> dict:
    """FID and KID (torchmetrics) between two sets of images [N, 3, H, W] in [0, 1], in the classifier's
    feature space. KID uses every image at once (one subset of the smaller count): no random subsets."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    features = ClassifierFeatures(classifier.eval())
    n = min(len(ours), len(reference))
    fid = FrechetInceptionDistance(feature=features)
    with warnings.catch_warnings():  # "will save all extracted features": 32 of them here
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=features, subsets=1, subset_size=n)
    for metric in (fid, kid):
        metric.update(reference.float().clamp(0, 1), real=True)
        metric.update(ours.float().clamp(0, 1), real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws its (here: one, complete) subset with torch.randperm
        return {"fid": float(fid.compute()), "kid": float(kid.compute()[0])}


def ring_cameras(views: int = RING_VIEWS, size: int = EVAL_SIZE):
    """The evaluator's ring: ``views`` cameras evenly round the object from the front, at RING_ELEVATION."""
    azimuth = torch.arange(views) * (360.0 / views)
    return orbit_cameras(RING_ELEVATION, azimuth, RING_RADIUS, RING_FOVY, size, size)


@torch.no_grad()
def prior_reference(prior, prompt: str, views: int = DISTRIBUTION_VIEWS, seed: int = 0, steps: int = 50) -> Tensor:
    """The prior's own images of ``prompt``, one per view of ``ring_cameras(views)``, phrased with that
    view's word (", front view", ...) so the two sets show the object from the same mix of sides. DDIM with
    the prior's own sampling settings, as `splat3d prior sample` draws them."""
    from splat3d.distill.prompts import view_prompt
    from splat3d.distill.sample import sample_images

    cams = ring_cameras(views)
    prompts = [view_prompt(prompt, v) for v in view_names(cams.elevation, cams.azimuth, PromptConfig())]
    return sample_images(prior, prompts, steps, prior.sample_guidance_scale, seed).float().cpu().clamp(0, 1)


@torch.no_grad()
def distribution_metrics(scene: GaussianScene, reference: Tensor, classifier: ShapesClassifier) -> dict:
    """FID and KID of a scene's ring renders against the prior's samples (``prior_reference``)."""
    ours = render(scene.to("cpu"), ring_cameras(len(reference)), 1.0, backend="torch").images
    return distribution_distance(ours.clamp(0, 1), reference, classifier)


def dataset_labels(data: dict) -> dict[str, Tensor]:
    """Colour, kind and view class indices for a prior-training dataset."""
    names = [o.split(" ") for o in data["objects"]]
    colour = torch.tensor([list(COLOURS).index(c) for c, _ in names])[data["object"]]
    kind = torch.tensor([KINDS.index(k) for _, k in names])[data["object"]]
    views = view_names(data["elevation"], data["azimuth"], PromptConfig())
    return {"colour": colour, "kind": kind, "view": torch.tensor([VIEWS.index(v) for v in views])}


def train_classifier(data: dict, steps: int = 1500, batch_size: int = 128, seed: int = 0, log=None):
    """Fit the classifier on the dataset (90%) and report accuracy on the held-out 10%.

    It judges at the dataset's resolution. Augmented toward what distillation produces: colour
    jitter, noise, shifts of a few pixels, and sometimes a blur (a render a little out of focus).
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    labels = dataset_labels(data)
    order = torch.randperm(len(data["images"]), generator=g)
    held = order[: len(order) // 10]
    train = order[len(order) // 10 :]
    size = data["images"].shape[-1]
    model = ShapesClassifier(width=32 if size <= 32 else 16, input_size=size)  # 16 at 64 px: 4x cheaper
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    reach = max(2, size // 16)
    # A quarter of each batch from the kinds with a front: only they teach the view head.
    fronted_train = train[torch.tensor([KINDS[k] in FRONTED for k in labels["kind"][train].tolist()])]
    extra = batch_size // 4 if len(fronted_train) else 0
    for step in range(steps):
        idx = torch.cat([
            train[torch.randint(0, len(train), (batch_size - extra,), generator=g)],
            fronted_train[torch.randint(0, max(1, len(fronted_train)), (extra,), generator=g)],
        ])  # fmt: skip
        images = data["images"][idx].float() / 255.0
        images = images * (1 + 0.1 * torch.randn(batch_size, 3, 1, 1, generator=g))
        images = images + 0.03 * torch.randn(images.shape, generator=g)
        shift = torch.randint(-reach, reach + 1, (2,), generator=g).tolist()
        images = torch.roll(images, shifts=shift, dims=(2, 3)).clamp(0, 1)
        blurred = torch.rand(batch_size, generator=g) < 0.25
        images[blurred] = F.avg_pool2d(images[blurred], 3, 1, 1, count_include_pad=False)
        out = model(images)
        fronted = torch.tensor([KINDS[k] in FRONTED for k in labels["kind"][idx].tolist()])
        loss = F.cross_entropy(out["colour"], labels["colour"][idx]) + F.cross_entropy(out["kind"], labels["kind"][idx])
        if fronted.any():  # the view only has meaning for objects with a front
            loss = loss + F.cross_entropy(out["view"][fronted], labels["view"][idx][fronted])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % 250 == 0:
            log(f"classifier step {step + 1}/{steps}: loss {loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        out = torch.cat(
            [torch.cat(list(model(chunk.float() / 255.0).values()), 1) for chunk in data["images"][held].split(512)]
        )
        out = dict(zip(("colour", "kind", "view"), out.split([len(COLOURS), len(KINDS), len(VIEWS)], 1)))
        fronted = torch.tensor([KINDS[k] in FRONTED for k in labels["kind"][held].tolist()])
        accuracy = {
            "colour": (out["colour"].argmax(1) == labels["colour"][held]).float().mean().item(),
            "kind": (out["kind"].argmax(1) == labels["kind"][held]).float().mean().item(),
            "view_fronted": (out["view"][fronted].argmax(1) == labels["view"][held][fronted]).float().mean().item(),
        }
    return model, accuracy


def save_classifier(model: ShapesClassifier, folder: Path, accuracy: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(folder / "classifier.safetensors"))
    meta = {"colours": list(COLOURS), "kinds": list(KINDS), "views": list(VIEWS), "input_size": model.input_size,
            "width": model.width, "held_out_accuracy": accuracy}  # fmt: skip
    (folder / "classifier.json").write_text(json.dumps(meta, indent=1))


def load_classifier(folder: Path) -> ShapesClassifier:
    from safetensors.torch import load_file

    meta = json.loads((Path(folder) / "classifier.json").read_text())
    # Written before size and width were recorded: the first evaluator's 32 px and width 32.
    model = ShapesClassifier(width=meta.get("width", 32), input_size=meta.get("input_size", 32))
    model.load_state_dict(load_file(str(Path(folder) / "classifier.safetensors")))
    return model.eval()


@dataclass
class Evaluation:
    prompt: str
    colour: str
    kind: str
    prompt_accuracy: float
    colour_accuracy: float
    kind_accuracy: float
    iou: float
    colour_error: float
    speckle: float
    view_consistency: Optional[float]
    per_view: list
    fid: Optional[float] = None
    kid: Optional[float] = None
    area_ratio: Optional[float] = None


@torch.no_grad()
def evaluate_scene(
    scene: GaussianScene, colour: str, kind: str, classifier: ShapesClassifier, reference: Optional[Tensor] = None
) -> Evaluation:
    """The metrics of the module's docstring; FID and KID only with the prior's samples as ``reference``."""
    cams = ring_cameras()
    azimuth = cams.azimuth
    scene = scene.to("cpu")
    ours = render(scene, cams, 1.0, backend="torch")
    truth = render(make_object(colour, kind), cams, 1.0, backend="torch")
    logits = classifier(ours.images.clamp(0, 1))
    pred_colour = [list(COLOURS)[i] for i in logits["colour"].argmax(1).tolist()]
    pred_kind = [KINDS[i] for i in logits["kind"].argmax(1).tolist()]
    pred_view = [VIEWS[i] for i in logits["view"].argmax(1).tolist()]
    true_view = view_names(cams.elevation, cams.azimuth, PromptConfig())
    mask_ours, mask_true = ours.alphas[:, 0] > 0.5, truth.alphas[:, 0] > 0.5
    inter = (mask_ours & mask_true).sum((1, 2)).float()
    union = (mask_ours | mask_true).sum((1, 2)).float().clamp_min(1)
    both = (mask_ours & mask_true)[:, None].expand_as(ours.images)
    colour_error = ((ours.images - truth.images).abs() * both).sum() / both.sum().clamp_min(1)
    edge = 2 * SPECKLE_EDGE + 1
    inside = ~F.max_pool2d((~(mask_ours & mask_true))[:, None].float(), edge, 1, SPECKLE_EDGE).bool()[:, 0]
    far = (ours.images - truth.images).abs().amax(1) > SPECKLE_THRESHOLD
    speckle = (far & inside).sum() / inside.sum().clamp_min(1)
    ok_colour = [p == colour for p in pred_colour]
    ok_kind = [p == kind for p in pred_kind]
    per_view = [
        {"azimuth": float(a), "colour": c, "kind": k, "view": v, "true_view": tv, "iou": float(i / u)}
        for a, c, k, v, tv, i, u in zip(azimuth.tolist(), pred_colour, pred_kind, pred_view, true_view, inter, union)
    ]
    consistency = None
    if kind in FRONTED:
        consistency = sum((p == "front") == (t == "front") for p, t in zip(pred_view, true_view)) / RING_VIEWS
    return Evaluation(
        prompt=f"a {colour} {kind}", colour=colour, kind=kind,
        prompt_accuracy=sum(a and b for a, b in zip(ok_colour, ok_kind)) / RING_VIEWS,
        colour_accuracy=sum(ok_colour) / RING_VIEWS, kind_accuracy=sum(ok_kind) / RING_VIEWS,
        iou=float((inter / union).mean()), colour_error=float(colour_error), speckle=float(speckle),
        view_consistency=consistency,
        per_view=per_view,
        area_ratio=float(mask_ours.sum() / mask_true.sum().clamp_min(1)),
        **(distribution_metrics(scene, reference, classifier) if reference is not None else {}),
    )  # fmt: skip


@torch.no_grad()
def ring_accuracy(classifier: ShapesClassifier, seed: int = 1) -> dict:
    """The classifier on the evaluator's own ring of views of every true object (sampled with another
    seed than the training renders): colour and kind over all objects, view over those with a front."""
    cams = ring_cameras()
    true_view = torch.tensor([VIEWS.index(v) for v in view_names(cams.elevation, cams.azimuth, PromptConfig())])
    right = {"colour": [], "kind": [], "view_fronted": []}
    for c, colour in enumerate(COLOURS):
        for k, kind in enumerate(KINDS):
            images = render(make_object(colour, kind, seed=seed), cams, 1.0, backend="torch").images.clamp(0, 1)
            out = classifier(images)
            right["colour"].append(out["colour"].argmax(1) == c)
            right["kind"].append(out["kind"].argmax(1) == k)
            if kind in FRONTED:
                right["view_fronted"].append(out["view"].argmax(1) == true_view)
    return {name: torch.cat(r).float().mean().item() for name, r in right.items()}


def evaluate_run(run: Path, strict: bool = True, distribution: bool = True) -> Optional[Evaluation]:
    """Evaluate a run folder against the shapes world's truth (and, with ``distribution``, FID and KID
    against the run's prior, sampled here).

    Without a truth (the prompt names no colour and kind of the world) or an
    evaluator (the model ships no classifier), raise one clear sentence, or
    return None when ``strict`` is False (``batch`` evaluates where it can).
    """
    from splat3d.distill.priors import builtin_priors
    from splat3d.errors import Splat3dError
    from splat3d.run.config import build_config
    from splat3d.run.folder import RunFolder
    from splat3d.shapes.world import parse_prompt

    run = RunFolder(run)
    if not run.is_run():
        raise Splat3dError(f"{run.path} is not a run folder (no config.yaml); pass the --out folder of a generate run.")
    cfg = build_config(str(run.config_path))
    spec = parse_prompt(cfg.prompt.prompt)
    folder = builtin_priors().get(cfg.model) or Path(cfg.model)
    if spec is None:
        if not strict:
            return None
        raise Splat3dError(
            f"The prompt {cfg.prompt.prompt!r} names no colour ({', '.join(COLOURS)}) and object "
            f"({', '.join(KINDS)}) of the shapes world, so there is no truth to compare with."
        )
    if not (folder / "classifier.safetensors").is_file():
        if not strict:
            return None
        raise Splat3dError(
            f"The model {cfg.model!r} ships no evaluator; splat3d eval scores runs of the shapes prior "
            "(--model shapes)."
        )
    reference = None
    if distribution:
        from splat3d.distill.priors import load_prior

        reference = prior_reference(load_prior(cfg.model, device="cpu"), cfg.prompt.prompt)
    result = evaluate_scene(run.load_scene(), spec.colour, spec.kind, load_classifier(folder), reference)
    write_evaluation(result, run.eval_path)
    return result


def run_metrics(run: Path) -> Optional[dict]:
    """The ``splat3d.evaluators`` hook (pyproject.toml) that batch calls: metrics of a shapes-world run, or None."""
    evaluation = evaluate_run(run, strict=False, distribution=False)  # FID/KID: 32 prior samples a run, too dear
    if evaluation is None:
        return None
    return {
        "prompt_accuracy": evaluation.prompt_accuracy, "iou": evaluation.iou,
        "colour_error": evaluation.colour_error, "speckle": evaluation.speckle,
        "view_consistency": evaluation.view_consistency,
    }  # fmt: skip


def write_evaluation(evaluation: Evaluation, path: Path) -> None:
    from splat3d.io.fileio import atomic_write

    text = json.dumps(asdict(evaluation), indent=1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def true_solid(kind: str, points: Tensor, cell: float = 0.02) -> Tensor:
    """Which ``points`` [P, 3] lie inside the true object: its surface sampled densely (far below a
    cell apart), voxelised at ``cell``, gaps up to 4 cells closed (the house's eaves leave its attic
    open a crack) and its enclosed inside filled (scipy.ndimage)."""
    import numpy as np
    from scipy import ndimage

    from splat3d.shapes.world import object_points

    surface, _ = object_points(kind, 400_000, seed=0)
    lo = surface.min(0).values - 2 * cell
    shape = tuple(int(v) for v in ((surface.max(0).values - lo) / cell).ceil().long() + 3)
    grid = np.zeros(shape, dtype=bool)
    idx = ((surface - lo) / cell).floor().long().numpy()
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    grid = ndimage.binary_fill_holes(ndimage.binary_closing(np.pad(grid, 5), iterations=4))[5:-5, 5:-5, 5:-5]
    q = ((points.double() - lo) / cell).floor().long()
    inside = ((q >= 0) & (q < torch.tensor(shape))).all(1)
    q = q.clamp(torch.zeros(3, dtype=torch.long), torch.tensor(shape) - 1).numpy()
    return torch.from_numpy(grid[q[:, 0], q[:, 1], q[:, 2]]) & inside


def evaluate_mesh(mesh, scene: GaussianScene, kind: Optional[str] = None, views: int = 8) -> dict:
    """How well a mesh stands for its scene, and for the true object:

    - silhouette IoU: the mesh's silhouette against the splat render's alpha mask (> 0.5), from a ring
      of ``views`` views at the evaluator's elevation and distance, 128 px;
    - volume IoU (with ``kind``): the mesh's inside against the true object's (``true_solid``), at
      points 0.02 apart over the union of both boxes;
    - watertight (trimesh).
    """
    import numpy as np
    import trimesh

    from splat3d.render.mesh import render_mesh

    cams = ring_cameras(views)
    with torch.no_grad():
        splat = render(scene.to("cpu"), cams, 1.0, backend="torch").alphas[:, 0].numpy() > 0.5
    _, masks = render_mesh(mesh, cams)
    silhouette = (splat & masks).sum((1, 2)) / np.maximum((splat | masks).sum((1, 2)), 1)
    result = {"silhouette_iou": float(silhouette.mean()), "watertight": bool(mesh.is_watertight),
              "faces": int(len(mesh.faces))}  # fmt: skip
    if kind is not None:
        lo = np.minimum(mesh.bounds[0], -0.75) - 0.02
        hi = np.maximum(mesh.bounds[1], 0.75) + 0.02
        axes = [np.arange(lo[d], hi[d], 0.02) + 0.01 for d in range(3)]
        points = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        voxels = trimesh.voxel.creation.voxelize(mesh, pitch=0.02).fill()
        ours = voxels.is_filled(points)
        truth = true_solid(kind, torch.from_numpy(points)).numpy()
        result["volume_iou"] = float((ours & truth).sum() / max((ours | truth).sum(), 1))
    return result
