"""Rendering of the embedded world: a scene drawn by `world` -> float RGB pixels in its domain.

Shapes are drawn from signed distance fields (SDFs): each shape's exact SDF is tabulated once on a
fine grid, sampled bilinearly at every pixel, and turned into anti-aliased coverage, outlines or
glow. The domains keep the shape but change low-level statistics strongly (textures, strokes,
blur, palette, brightness), so a model fitted on "photo" meets a real distribution shift elsewhere.

`world` draws the scenes and captions and calls `render`. A scene brings its shape name and
colours (`Scene.shape`, `Scene.colour_rgb`, `Scene.background_rgb`), so this module needs none of
world's tables and does not import it.
"""
import functools

import numpy as np


# ----------------------------------------------------------------------------------------------
# Shapes as signed distance fields (negative inside), in units where the shape spans about [-1, 1].


def _polygon_sdf(points, vertices):
    """Exact signed distance from points [N, 2] to a closed polygon [V, 2] (even-odd inside)."""
    starts, ends = vertices, np.roll(vertices, -1, axis=0)
    edges = ends - starts
    to_point = points[:, None, :] - starts[None]
    along = np.clip((to_point * edges).sum(-1) / (edges * edges).sum(-1), 0.0, 1.0)
    distance = np.linalg.norm(to_point - along[..., None] * edges, axis=-1).min(axis=1)
    x, y = points[:, :1], points[:, 1:]
    straddles = (starts[:, 1] > y) != (ends[:, 1] > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing_x = starts[:, 0] + (y - starts[:, 1]) * edges[:, 0] / edges[:, 1]
    inside = (straddles & (x < crossing_x)).sum(axis=1) % 2 == 1
    return np.where(inside, -distance, distance)


def _circle_sdf(points, centre, radius):
    return np.linalg.norm(points - np.asarray(centre), axis=-1) - radius


def _regular_polygon(corners, radius, first_angle_degrees, inner_radius=None):
    """Vertices of a regular polygon, or of a star when `inner_radius` alternates with `radius`."""
    steps = corners if inner_radius is None else 2 * corners
    angles = np.deg2rad(first_angle_degrees) + 2 * np.pi * np.arange(steps) / steps
    if inner_radius is None:
        radii = np.full(steps, radius)
    else:
        radii = np.tile([radius, inner_radius], corners)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=-1)


def _shape_sdf(shape, p):
    """Exact SDF of one class at points p [N, 2] (x right, y down)."""
    if shape == "circle":
        return _circle_sdf(p, (0, 0), 0.9)
    if shape == "square":
        return _polygon_sdf(p, np.array([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]))
    if shape == "triangle":
        return _polygon_sdf(p, _regular_polygon(3, 1.05, -90) + (0, 0.2))
    if shape == "star":
        return _polygon_sdf(p, _regular_polygon(5, 1.0, -90, inner_radius=0.45))
    if shape == "cross":
        arm, reach = 0.3, 0.9
        return np.minimum(_polygon_sdf(p, np.array([(-reach, -arm), (reach, -arm), (reach, arm),
                                                    (-reach, arm)])),
                          _polygon_sdf(p, np.array([(-arm, -reach), (arm, -reach), (arm, reach),
                                                    (-arm, reach)])))
    if shape == "heart":
        lobes = np.minimum(_circle_sdf(p, (-0.42, -0.32), 0.5), _circle_sdf(p, (0.42, -0.32), 0.5))
        point = _polygon_sdf(p, np.array([(-0.9, -0.18), (0.9, -0.18), (0, 0.9)]))
        return np.minimum(lobes, point)
    if shape == "diamond":
        return _polygon_sdf(p, np.array([(0, -1.0), (0.68, 0), (0, 1.0), (-0.68, 0)]))
    if shape == "hexagon":
        return _polygon_sdf(p, _regular_polygon(6, 0.95, 0))
    if shape == "crescent":
        return np.maximum(_circle_sdf(p, (0, 0), 0.9), -_circle_sdf(p, (0.5, -0.3), 0.75))
    if shape == "arrow":
        return _polygon_sdf(p, np.array([(-0.9, -0.2), (0.1, -0.2), (0.1, -0.62), (0.95, 0),
                                         (0.1, 0.62), (0.1, 0.2), (-0.9, 0.2)]))
    if shape == "ring":
        return np.abs(_circle_sdf(p, (0, 0), 0.68)) - 0.24
    raise ValueError(f"Unknown shape {shape!r}: no signed distance field is defined for it.")


SDF_TABLE_SIZE = 128  # Texels per side of each tabulated SDF.
SDF_TABLE_EXTENT = 1.6  # The table covers [-extent, extent]^2 in shape units.


@functools.cache
def _sdf_table(shape):
    """The shape's SDF tabulated on a grid, as bilinear coefficients per cell: [4, cells].

    A cell with corner values v00, v01 (right), v10 (below), v11 interpolates as
    a + b * fx + fy * (c + d * fx); storing (a, b, c, d) makes rendering one gather per pixel,
    and costs the same for every shape.
    """
    axis = np.linspace(-SDF_TABLE_EXTENT, SDF_TABLE_EXTENT, SDF_TABLE_SIZE)
    x, y = np.meshgrid(axis, axis)
    points = np.stack([x.ravel(), y.ravel()], axis=-1)
    values = _shape_sdf(shape, points).reshape(SDF_TABLE_SIZE, SDF_TABLE_SIZE)
    v00, v01, v10, v11 = values[:-1, :-1], values[:-1, 1:], values[1:, :-1], values[1:, 1:]
    coefficients = np.stack([v00, v01 - v00, v10 - v00, v11 - v10 - v01 + v00])
    return coefficients.reshape(4, -1).astype(np.float32)


@functools.cache
def _pixel_centres(image_size):
    centres = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
    return centres[None, None, :], centres[None, :, None]  # x varies along width, y along height.


def _scene_sdf(scene, image_size):
    """Signed distance in pixels from every pixel to the nearest object: float32 [H, W]."""
    cells_per_side = SDF_TABLE_SIZE - 1
    texels_per_unit = cells_per_side / (2 * SDF_TABLE_EXTENT)
    x, y = _pixel_centres(image_size)
    centres = np.array(scene.centres, dtype=np.float32)[:, :, None, None]
    # Rotate each pixel into its object's frame, in texels (per object: [count, H, W]).
    to_texels = texels_per_unit / scene.radius
    cos = (np.cos(scene.angles) * to_texels).astype(np.float32)[:, None, None]
    sin = (np.sin(scene.angles) * to_texels).astype(np.float32)[:, None, None]
    dx, dy = x - centres[:, 0], y - centres[:, 1]
    table_centre = np.float32(SDF_TABLE_EXTENT * texels_per_unit)
    u = (dx * cos + table_centre) + dy * sin
    v = (dy * cos + table_centre) - dx * sin
    last = np.float32(cells_per_side - 1e-3)
    u_in, v_in = np.clip(u, 0, last), np.clip(v, 0, last)
    u_cell, v_cell = np.floor(u_in), np.floor(v_in)
    fu, fv = u_in - u_cell, v_in - v_cell
    cell = (v_cell * cells_per_side + u_cell).astype(np.int32)
    a, b, c, d = np.take(_sdf_table(scene.shape), cell, axis=1)
    inside_table = a + b * fu + fv * (c + d * fu)
    # Beyond the table, add the distance to its border (an upper bound, exact enough far away).
    beyond_table = np.hypot(u - u_in, v - v_in) / np.float32(texels_per_unit)
    shape_units = (inside_table + beyond_table).min(axis=0)
    return shape_units * np.float32(scene.radius * image_size)


# ----------------------------------------------------------------------------------------------
# Domain renderers: (scene, sdf in pixels, rng) -> float32 RGB image [H, W, 3] in about [0, 1].
# Widths are given at 32 px and scale with the image.


@functools.cache
def _upsampling_matrix(output_size, input_size):
    """Linear interpolation from input_size samples to output_size pixels, as a matrix."""
    position = (np.arange(output_size) + 0.5) / output_size * (input_size - 1)
    lower = np.minimum(position.astype(int), input_size - 2)
    weight = position - lower
    matrix = np.zeros((output_size, input_size), np.float32)
    matrix[np.arange(output_size), lower] = 1 - weight
    matrix[np.arange(output_size), lower + 1] = weight
    return matrix


def _smooth_noise(rng, image_size, rows, cols):
    """Noise in [0, 1] with `rows` x `cols` degrees of freedom, smoothly upsampled: [H, W].

    Keep rows and cols small (about 10 at most): larger products start BLAS threads, which
    stall when processes fight for cores.
    """
    grid = rng.random((rows, cols), dtype=np.float32)
    return _upsampling_matrix(image_size, rows) @ grid @ _upsampling_matrix(image_size, cols).T


def _pixel_noise(rng, image_size, channels):
    return rng.random((image_size, image_size, channels), dtype=np.float32) - 0.5


def _rgb(values):
    return np.asarray(values, np.float32)


def _fill(sdf, softness=1.0):
    """Anti-aliased coverage of the shapes' insides: [H, W, 1]."""
    return np.clip(0.5 - sdf / softness, 0.0, 1.0)[..., None]


def _stroke(sdf, width):
    """Anti-aliased coverage of a line of `width` pixels along the shapes' edges: [H, W, 1]."""
    return np.clip(0.5 * width + 0.5 - np.abs(sdf), 0.0, 1.0)[..., None]


def _shifted(image, offset):
    """`image` moved down and right by `offset` pixels, zero-filled."""
    moved = np.zeros_like(image)
    moved[offset:, offset:] = image[:image.shape[0] - offset, :image.shape[1] - offset]
    return moved


def _render_photo(scene, sdf, rng):
    """Filled, lit objects casting a shadow on a mottled background, with sensor noise."""
    size = sdf.shape[0]
    x, y = _pixel_centres(size)
    light_angle = rng.uniform(0, 2 * np.pi)
    lighting = (1.0 + 0.35 * ((x - 0.5) * np.cos(light_angle) + (y - 0.5) * np.sin(light_angle)))[0]
    texture = 0.75 + 0.5 * _smooth_noise(rng, size, 5, 5)
    background = _rgb(scene.background_rgb) * (texture * lighting)[..., None]
    coverage = _fill(sdf)
    shadow = _shifted(coverage, max(1, round(size / 24)))
    background = background * (1 - 0.45 * shadow)
    shading = (lighting * (0.9 + 0.2 * _smooth_noise(rng, size, 3, 3)))[..., None]
    objects = _rgb(scene.colour_rgb) * shading
    image = background * (1 - coverage) + objects * coverage
    return image + rng.uniform(0.03, 0.08) * _pixel_noise(rng, size, 3)


def _render_sketch(scene, sdf, rng):
    """Coloured-pencil outlines and diagonal hatching on grainy paper."""
    size = sdf.shape[0]
    scale = size / 32
    paper = _rgb(scene.background_rgb) * (
        0.97 + 0.06 * _pixel_noise(rng, size, 1))
    pressure = 0.6 + 0.4 * _smooth_noise(rng, size, 6, 6)[..., None]
    outline = _stroke(sdf, rng.uniform(0.8, 1.3) * scale) * pressure
    x, y = _pixel_centres(size)
    period = rng.uniform(3.0, 4.5) * scale / size
    stripes = np.clip(2.0 * np.sin(2 * np.pi * (x + y)[0] / period) - 0.6, 0.0, 1.0)[..., None]
    ink = 0.8 * _rgb(scene.colour_rgb)
    alpha = np.maximum(outline, 0.45 * stripes * _fill(sdf))
    return paper * (1 - alpha) + ink * alpha


def _render_painting(scene, sdf, rng):
    """Soft-edged, warm, saturated colours with streaky brush texture."""
    size = sdf.shape[0]
    coverage = _fill(sdf, softness=rng.uniform(1.6, 2.6) * size / 32)
    image = (_rgb(scene.background_rgb) * (1 - coverage)
             + _rgb(scene.colour_rgb) * coverage)
    grey = image.mean(axis=-1, keepdims=True)
    image = (grey + 1.5 * (image - grey)) * _rgb((1.12, 1.0, 0.75))  # Saturated, warm palette.
    streaks = _smooth_noise(rng, size, 3, 10)
    if rng.random() < 0.5:
        streaks = streaks.T
    return image * (0.65 + 0.7 * streaks)[..., None]


def _render_clipart(scene, sdf, rng):
    """Flat saturated fills with thick dark outlines on a flat pastel background."""
    size = sdf.shape[0]
    coverage = _fill(sdf)
    image = (_rgb(scene.background_rgb) * (1 - coverage)
             + _rgb(scene.colour_rgb) * coverage)
    width = rng.uniform(1.0, 1.4) * size / 32 + 0.08 * scene.radius * size
    outline = _stroke(sdf - width / 2, width)  # Outside the fill, so small shapes keep it.
    return image * (1 - outline) + 0.08 * outline


def _render_neon(scene, sdf, rng):
    """Glowing tubes along the outlines on a dark background."""
    size = sdf.shape[0]
    scale = size / 32
    colour = _rgb(scene.colour_rgb)
    glow = np.exp(-np.abs(sdf) / (rng.uniform(1.2, 2.2) * scale))[..., None]
    tube = _stroke(sdf, rng.uniform(0.8, 1.2) * scale)
    background = _rgb(scene.background_rgb) + 0.02 * _pixel_noise(rng, size, 1)
    return background + 0.9 * glow * colour + 0.8 * tube * (0.4 + 0.6 * colour)


_RENDERERS = {"photo": _render_photo, "sketch": _render_sketch, "painting": _render_painting,
              "clipart": _render_clipart, "neon": _render_neon}


def render(scene, image_size, rng):
    """`scene` (a `world.Scene`) at image_size x image_size pixels, in the style of its domain,
    drawing the domain's noise from `rng`: float32 RGB [H, W, 3] in about [0, 1]."""
    return _RENDERERS[scene.domain](scene, _scene_sdf(scene, image_size), rng)
