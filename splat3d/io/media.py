"""Pictures and videos: PNG files, view grids and turntable videos (imageio)."""

from __future__ import annotations

import errno
import math
from pathlib import Path
from typing import Sequence, Union

import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor

from splat3d.io.fileio import atomic_write


def to_uint8(image: Tensor) -> np.ndarray:
    """[3, H, W] or [H, W, 3] float in [0, 1] -> [H, W, 3] uint8."""
    if image.ndim == 3 and image.shape[0] in (1, 3):  # channel-first, as render() returns
        image = image.permute(1, 2, 0)
    array = (image.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array


def save_png(image: Union[Tensor, np.ndarray], path: Union[str, Path]) -> Path:
    path = Path(path)
    array = image if isinstance(image, np.ndarray) else to_uint8(image)
    atomic_write(path, lambda tmp: iio.imwrite(tmp, array, extension=".png"))
    return path


def grid(images: Sequence[np.ndarray], columns: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile equally sized [H, W, 3] uint8 images, white between them."""
    assert images, "need at least one image for a grid"
    h, w = images[0].shape[:2]
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    return out


def has_mp4_writer() -> bool:
    try:
        import imageio_ffmpeg  # a dependency, but a machine without it still writes GIFs

        return Path(imageio_ffmpeg.get_ffmpeg_exe()).exists()
    except Exception:  # noqa: BLE001 - no usable ffmpeg binary, for whatever reason
        return False


def save_video(frames: Sequence[np.ndarray], path: Union[str, Path], fps: int = 24) -> Path:
    """Write frames as mp4 (H.264 via imageio-ffmpeg); as GIF if the path ends
    in .gif or no mp4 writer exists. Returns the path written."""
    path = Path(path)
    stack = np.stack(list(frames))
    if path.suffix.lower() != ".gif" and not has_mp4_writer():
        path = path.with_suffix(".gif")
    if path.suffix.lower() == ".gif":
        atomic_write(path, lambda tmp: iio.imwrite(tmp, stack, extension=".gif", duration=1000 / fps, loop=0))
    else:
        # H.264 in yuv420p needs even sizes; pad by one pixel of edge where odd.
        h, w = stack.shape[1:3]
        stack = np.pad(stack, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")

        def write_mp4(tmp: str) -> None:
            iio.imwrite(
                tmp, stack, extension=".mp4", plugin="FFMPEG", fps=fps, codec="libx264",
                pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="quiet",
            )  # fmt: skip
            # ffmpeg reports a full disk only on its own stderr and imageio returns as if all went well:
            # read the file back, so a truncated video never replaces a good one.
            import imageio_ffmpeg

            try:
                complete = imageio_ffmpeg.count_frames_and_secs(tmp)[0] == len(stack)
            except (RuntimeError, OSError):
                complete = False
            if not complete:
                raise OSError(errno.EIO, "the video encoder could not finish the file; is the disk full?")

        atomic_write(path, write_mp4)
    return path
