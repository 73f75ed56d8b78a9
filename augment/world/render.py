"""Drawing a scene: 64x64 RGB images, re-rendered variants, and each object's box in pixels."""
from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

from augment.world.scene import COLOURS, Scene, SceneObject, sample_render_details

IMAGE_SIZE = 64
GREY = (128, 128, 128)
NOISE_AMPLITUDE = 24  # noisy backgrounds vary by up to +-24 grey levels per pixel
# centre of each named position in pixels; far enough apart that large objects barely touch
POSITION_PIXELS = {"left": (13, 32), "right": (51, 32), "top": (32, 13), "bottom": (32, 51), "centre": (32, 32)}
SIZE_RADIUS = {"small": 5.0, "large": 9.0}


def _unit_outline(shape: str) -> list[tuple[float, float]]:
    """Polygon of `shape` around (0, 0) with radius about 1 (y downwards)."""
    if shape == "square":
        return [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    if shape == "diamond":
        # taller than wide, so it never looks like a rotated square
        return [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]
    if shape == "triangle":
        return _regular_polygon(3, 1.1, -90.0)
    if shape == "hexagon":
        return _regular_polygon(6, 1.0, 0.0)
    if shape == "star":
        outer = _regular_polygon(5, 1.1, -90.0)
        inner = _regular_polygon(5, 0.45, -54.0)
        return [point for pair in zip(outer, inner) for point in pair]
    raise ValueError(f"no outline for {shape!r}")


def _regular_polygon(corners: int, radius: float, start_degrees: float) -> list[tuple[float, float]]:
    step = 360.0 / corners
    return [
        (radius * _cos(start_degrees + k * step), radius * _sin(start_degrees + k * step))
        for k in range(corners)
    ]


def _cos(degrees: float) -> float:
    return math.cos(math.radians(degrees))


def _sin(degrees: float) -> float:
    return math.sin(math.radians(degrees))


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    cx, cy = POSITION_PIXELS[obj.position]
    cx, cy = cx + obj.dx, cy + obj.dy
    radius = SIZE_RADIUS[obj.size]
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse([round(cx - radius), round(cy - radius), round(cx + radius), round(cy + radius)], fill=fill)
        return
    cos_r, sin_r = _cos(obj.rotation), _sin(obj.rotation)
    points = [
        (round(cx + radius * (x * cos_r - y * sin_r)), round(cy + radius * (x * sin_r + y * cos_r)))
        for x, y in _unit_outline(obj.shape)
    ]
    draw.polygon(points, fill=fill)


# random byte b -> grey level GREY - NOISE_AMPLITUDE + b % (2 * NOISE_AMPLITUDE + 1), as one table for bytes.translate
_NOISE_LEVELS = bytes(GREY[0] - NOISE_AMPLITUDE + b % (2 * NOISE_AMPLITUDE + 1) for b in range(256))


def _background(kind: str, noise_seed: int) -> Image.Image:
    if kind == "plain":
        return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), GREY)
    # randbytes is part of random's stable stream, and one call is fast enough for 4,096 pixels
    noise = random.Random(noise_seed).randbytes(IMAGE_SIZE * IMAGE_SIZE)
    return Image.frombytes("L", (IMAGE_SIZE, IMAGE_SIZE), noise.translate(_NOISE_LEVELS)).convert("RGB")


def render_scene(scene: Scene) -> Image.Image:
    """The scene as a 64x64 RGB image, fully determined by the scene (a noisy background's noise by
    its `noise_seed`)."""
    image = _background(scene.background, scene.noise_seed)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj)
    return image


def rerender_variant(scene: Scene, rng: random.Random) -> tuple[Scene, Image.Image]:
    """Same content (objects, colours, sizes, named positions, background kind), new layout details.

    At least one object moves by a pixel or more, so the image always differs from the original.
    """
    while True:
        objects = []
        for obj in scene.objects:
            dx, dy, rotation = sample_render_details(rng)
            objects.append(SceneObject(obj.shape, obj.colour, obj.size, obj.position, dx, dy, rotation))
        if any((new.dx, new.dy) != (old.dx, old.dy) for new, old in zip(objects, scene.objects)):
            break
    variant = Scene(tuple(objects), scene.background, rng.getrandbits(32))
    return variant, render_scene(variant)


def object_box(obj: SceneObject) -> tuple[int, int, int, int]:
    """The object's box [x, y, w, h] in pixels of the 64x64 image (inclusive pixel extents, as
    COCO/RefCOCO boxes are read by ALBEF's IoU), from the same geometry `_draw_object` draws."""
    cx, cy = POSITION_PIXELS[obj.position]
    cx, cy = cx + obj.dx, cy + obj.dy
    radius = SIZE_RADIUS[obj.size]
    if obj.shape == "circle":
        xs = [round(cx - radius), round(cx + radius)]
        ys = [round(cy - radius), round(cy + radius)]
    else:
        cos_r, sin_r = _cos(obj.rotation), _sin(obj.rotation)
        points = [(round(cx + radius * (x * cos_r - y * sin_r)), round(cy + radius * (x * sin_r + y * cos_r)))
                  for x, y in _unit_outline(obj.shape)]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, y0 = max(0, min(xs)), max(0, min(ys))
    x1, y1 = min(IMAGE_SIZE - 1, max(xs)), min(IMAGE_SIZE - 1, max(ys))
    return (x0, y0, x1 - x0 + 1, y1 - y0 + 1)
