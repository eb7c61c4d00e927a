"""A small z-buffer rasterizer (numpy; a few thousand triangles need no OpenGL) and the turntable.

Pixel centres are at integer coordinates (dlib's and the fit's convention): pixel (row i, column j)
is the point (x = j, y = i). A pixel belongs to a triangle when its centre is inside or on an edge;
its attributes are the barycentric interpolation of the triangle's vertex attributes at the centre
(affine in screen space: exact for the orthographic views drawn here), and the nearest triangle
(largest depth = closest to the viewer, the model's +z) wins.
"""

from __future__ import annotations

import cv2
import numpy as np

from normalized_faces.face3d.morphable_model import SurreyFaceModel

VIEW_HALF_EXTENT_MM = 106.0  # the views' framing: model units from the image centre to its edge
VIEW_CENTRE_Y_MM = 12.0  # the model's forehead-to-chin middle
MOUTH_COLOR = (70, 35, 35)  # what shows between open lips


def rasterize(screen: np.ndarray, triangles: np.ndarray, attributes: np.ndarray, height: int, width: int):
    """Draws triangles.

    Args:
      screen: [V, 3] (x, y, depth) per vertex; x, y in pixels, larger depth is nearer.
      triangles: [T, 3] vertex indices (either winding; degenerate ones are skipped).
      attributes: [V, C] values to interpolate (colours, texture coordinates, ...).

    Returns:
      (image [height, width, C] float64, zero where nothing is drawn; covered [height, width] bool;
      triangle_id [height, width] int, -1 where nothing is drawn).
    """
    screen = np.asarray(screen, np.float64)
    attributes = np.asarray(attributes, np.float64)
    image = np.zeros([height, width, attributes.shape[1]])
    depth_buffer = np.full([height, width], -np.inf)
    triangle_id = np.full([height, width], -1, np.int64)
    corners = screen[triangles]  # [T, 3, 3]
    lows = np.maximum(np.ceil(corners[..., :2].min(axis=1)), 0).astype(np.int64)
    highs = np.minimum(np.floor(corners[..., :2].max(axis=1)), [width - 1, height - 1]).astype(np.int64)
    for t in np.nonzero((highs >= lows).all(axis=1))[0]:
        (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = corners[t]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if area == 0:
            continue
        xs, ys = np.meshgrid(np.arange(lows[t, 0], highs[t, 0] + 1), np.arange(lows[t, 1], highs[t, 1] + 1))
        # Barycentric weights of the pixel centres, from the edge functions.
        w0 = ((x1 - xs) * (y2 - ys) - (x2 - xs) * (y1 - ys)) / area
        w1 = ((x2 - xs) * (y0 - ys) - (x0 - xs) * (y2 - ys)) / area
        w2 = 1.0 - w0 - w1
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        if not inside.any():
            continue
        rows, cols = ys[inside], xs[inside]
        b0, b1, b2 = w0[inside], w1[inside], w2[inside]
        depth = b0 * z0 + b1 * z1 + b2 * z2
        nearer = depth > depth_buffer[rows, cols]
        rows, cols, b0, b1, b2 = rows[nearer], cols[nearer], b0[nearer], b1[nearer], b2[nearer]
        depth_buffer[rows, cols] = depth[nearer]
        triangle_id[rows, cols] = t
        a = attributes[triangles[t]]
        image[rows, cols] = b0[:, None] * a[0] + b1[:, None] * a[1] + b2[:, None] * a[2]
    return image, triangle_id >= 0, triangle_id


def yaw_rotation(degrees: float) -> np.ndarray:
    """[3, 3] rotation about the vertical (y) axis; positive turns the face towards image right."""
    angle = np.deg2rad(degrees)
    return np.array([[np.cos(angle), 0.0, np.sin(angle)], [0.0, 1.0, 0.0], [-np.sin(angle), 0.0, np.cos(angle)]])


def render_view(
    model: SurreyFaceModel,
    vertices: np.ndarray,
    colors: np.ndarray,
    yaw_degrees: float = 0.0,
    size: int = 224,
    light=(0.3, 0.3, 1.0),
    ambient: float = 0.55,
    background=(255, 255, 255),
) -> np.ndarray:
    """The coloured mesh turned by `yaw_degrees`, orthographic, lit by a directional light from the
    viewer's upper left (Lambertian, so its shape shows) -> [size, size, 3] uint8.

    vertices [V, 3] in the model's frame (mm); colors [V, 3] in [0, 255]. The framing is fixed by
    the mean face's size, so views of one face at several yaws line up.
    """
    turned = np.asarray(vertices, np.float64) @ yaw_rotation(yaw_degrees).T
    normals = model.vertex_normals(turned)
    light = np.asarray(light, np.float64) / np.linalg.norm(light)
    shading = ambient + (1.0 - ambient) * np.clip(normals @ light, 0.0, 1.0)
    pixels_per_mm = (size - 1) / (2.0 * VIEW_HALF_EXTENT_MM)
    centre = (size - 1) / 2.0
    screen = np.stack(
        [
            centre + turned[:, 0] * pixels_per_mm,
            centre - (turned[:, 1] - VIEW_CENTRE_Y_MM) * pixels_per_mm,
            turned[:, 2],
        ],
        axis=-1,
    )
    image, covered, _ = rasterize(
        screen, model.triangles, np.asarray(colors, np.float64) * shading[:, None], size, size
    )
    image[~covered] = background
    image[enclosed_holes(covered)] = MOUTH_COLOR
    return np.clip(image, 0, 255).round().astype(np.uint8)


def enclosed_holes(covered: np.ndarray) -> np.ndarray:
    """Pixels the mesh does not cover but surrounds (the open mouth between the lips: the model has
    no inside), as opposed to the background reachable from the image's border."""
    outside = (~covered).astype(np.uint8)
    labels = cv2.connectedComponents(outside, connectivity=4)[1]
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return (outside > 0) & ~np.isin(labels, border)


def turntable(model, vertices, colors, yaws=(-45.0, -22.5, 0.0, 22.5, 45.0), size: int = 224) -> list:
    """Views of the mesh at each yaw (degrees): a list of [size, size, 3] uint8."""
    return [render_view(model, vertices, colors, yaw, size) for yaw in yaws]
