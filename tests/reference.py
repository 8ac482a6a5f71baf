"""An independent brute-force 3DGS renderer in float64, for testing only.

Every Gaussian is evaluated at every pixel; nothing is shared with
splat3d.render.raster_torch or gsplat's helpers (rotation, projection and the SH
basis are written out here from the papers' formulas, SH in the INRIA form).
The rules follow gsplat 1.5: eps2d low-pass, frustum-clamped Jacobian,
alpha = min(0.999, o exp(-sigma)), fragments below 1/255 skipped, compositing
stops before transmittance reaches 1e-4, colour = max(SH + 0.5, 0).
"""

import torch

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def eval_sh(degree, coeffs, dirs):
    """INRIA eval_sh. coeffs [..., 3, (deg+1)^2] -> [..., 3]; dirs unit [..., 3]."""
    result = C0 * coeffs[..., 0]
    if degree > 0:
        x, y, z = dirs[..., 0:1], dirs[..., 1:2], dirs[..., 2:3]
        result = result - C1 * y * coeffs[..., 1] + C1 * z * coeffs[..., 2] - C1 * x * coeffs[..., 3]
        if degree > 1:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            result = (
                result
                + C2[0] * xy * coeffs[..., 4]
                + C2[1] * yz * coeffs[..., 5]
                + C2[2] * (2.0 * zz - xx - yy) * coeffs[..., 6]
                + C2[3] * xz * coeffs[..., 7]
                + C2[4] * (xx - yy) * coeffs[..., 8]
            )
            if degree > 2:
                result = (
                    result
                    + C3[0] * y * (3 * xx - yy) * coeffs[..., 9]
                    + C3[1] * xy * z * coeffs[..., 10]
                    + C3[2] * y * (4 * zz - xx - yy) * coeffs[..., 11]
                    + C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * coeffs[..., 12]
                    + C3[4] * x * (4 * zz - xx - yy) * coeffs[..., 13]
                    + C3[5] * z * (xx - yy) * coeffs[..., 14]
                    + C3[6] * x * (xx - 3 * yy) * coeffs[..., 15]
                )
    return result


def quat_to_rot(q):
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def render_reference(raw, viewmat, K, width, height, sh_degree, background, near=0.01, far=1e10, eps2d=0.3):
    """raw: dict of raw parameters (float64). Returns image [H, W, 3], alpha [H, W]."""
    means, log_scales, quats = raw["means"], raw["scales"], raw["quats"]
    opac = torch.sigmoid(raw["opacities"])
    coeffs = torch.cat([raw["sh0"], raw["shN"]], 1)[:, : (sh_degree + 1) ** 2]  # [N, B, 3]

    R = quat_to_rot(quats)
    S = torch.diag_embed(torch.exp(log_scales))
    cov = R @ S @ S.transpose(-1, -2) @ R.transpose(-1, -2)
    Rv, tv = viewmat[:3, :3], viewmat[:3, 3]
    p = means @ Rv.T + tv
    cov_c = Rv @ cov @ Rv.T
    x, y, z = p.unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]

    keep = (z > near) & (z < far)
    # Gaussians behind the camera never enter the computation.
    idx = torch.nonzero(keep).flatten()
    x, y, z, cov_c, opac_k = x[idx], y[idx], z[idx], cov_c[idx], opac[idx]
    tanx, tany = 0.5 * width / fx, 0.5 * height / fy
    limx_pos, limx_neg = (width - cx) / fx + 0.3 * tanx, cx / fx + 0.3 * tanx
    limy_pos, limy_neg = (height - cy) / fy + 0.3 * tany, cy / fy + 0.3 * tany
    tx = z * torch.minimum(torch.maximum(x / z, -limx_neg), limx_pos)
    ty = z * torch.minimum(torch.maximum(y / z, -limy_neg), limy_pos)
    zero = torch.zeros_like(z)
    J = torch.stack(
        [torch.stack([fx / z, zero, -fx * tx / z**2], -1), torch.stack([zero, fy / z, -fy * ty / z**2], -1)],
        -2,
    )
    cov2d = J @ cov_c @ J.transpose(-1, -2) + eps2d * torch.eye(2, dtype=z.dtype)
    mean2d = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)
    conic = torch.linalg.inv(cov2d)

    campos = -Rv.T @ tv
    dirs = means[idx] - campos
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    color = torch.clamp_min(eval_sh(sh_degree, coeffs[idx].transpose(1, 2), dirs) + 0.5, 0.0)

    ys, xs = torch.meshgrid(torch.arange(height, dtype=z.dtype), torch.arange(width, dtype=z.dtype), indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(-1, 2) + 0.5  # [P, 2]
    d = pix[:, None, :] - mean2d[None]  # [P, M, 2]
    sigma = 0.5 * torch.einsum("pmi,mij,pmj->pm", d, conic, d)
    alpha = torch.clamp_max(opac_k[None] * torch.exp(-sigma), 0.999)
    ok = (sigma >= 0) & (alpha >= 1.0 / 255.0) & (opac_k[None] >= 1.0 / 255.0)

    P = pix.shape[0]
    T = torch.ones(P, dtype=z.dtype)
    done = torch.zeros(P, dtype=torch.bool)
    out = torch.zeros(P, 3, dtype=z.dtype)
    for m in torch.argsort(z).tolist():
        a = alpha[:, m]
        use = ok[:, m] & ~done
        next_T = T * (1 - a)
        stop = use & (next_T <= 1e-4)
        done = done | stop
        use = use & ~stop
        out = out + torch.where(use[:, None], (a * T)[:, None] * color[m][None], torch.zeros_like(out))
        T = torch.where(use, next_T, T)
    acc = 1 - T
    image = out + (1 - acc)[:, None] * background
    return image.reshape(height, width, 3), acc.reshape(height, width)
