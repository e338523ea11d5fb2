"""Procedural shapes on cluttered backgrounds: the drawing primitives of the embedded datasets.

Both embedded datasets draw with these, so a classifier pretrained on one transfers to the
other. Everything is a pure function of its arguments and a `numpy.random.Generator`. A class is
a silhouette (colour and size vary, so only the shape tells it); backgrounds are a gradient with
low-contrast clutter that is never a whole silhouette.
"""

from typing import Optional, Sequence

import cv2
import numpy as np

__all__ = ["CLASSES", "render_background", "render_object"]

CLASSES = ["circle", "square", "triangle", "cross", "star"]


def render_background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A cluttered HxWx3 uint8 image: gradient + thin lines + small blobs + speckle noise."""
    if height < 1 or width < 1:
        raise ValueError(f"image size {height}x{width} is invalid: expected height, width >= 1")
    corners = rng.uniform(40, 215, size=(2, 2, 3)).astype(np.float32)
    image = cv2.resize(corners, (width, height), interpolation=cv2.INTER_LINEAR)
    base = float(image.mean())
    area = height * width
    for _ in range(int(rng.integers(4, 10)) * max(1, area // 40000)):
        p0 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(image, p0, p1, _clutter_color(base, rng), 1, cv2.LINE_AA)
    for _ in range(int(rng.integers(6, 14)) * max(1, area // 40000)):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(image, center, axes, angle, 0, 360, _clutter_color(base, rng), -1, cv2.LINE_AA)
    image += rng.normal(0.0, 6.0, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def render_object(
    image: np.ndarray, class_index: int, box: Sequence[float], rng: np.random.Generator
) -> Optional[np.ndarray]:
    """Draw an object of class `CLASSES[class_index]` filling `box` (x0, y0, x1, y1) in place;
    its HxW boolean mask, or None (nothing drawn) when the clipped box is under 3 pixels a side."""
    if not 0 <= class_index < len(CLASSES):
        raise ValueError(
            f"class_index={class_index!r} is invalid: expected 0..{len(CLASSES) - 1} ({CLASSES})"
        )
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image of shape {image.shape} {image.dtype}: expected HxWx3 uint8")
    height, width = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = max(0.0, x0), min(float(width), x1)
    y0, y1 = max(0.0, y0), min(float(height), y1)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return None
    polygons = _silhouette(CLASSES[class_index], x0, y0, x1, y1, rng)
    mask = np.zeros((height, width), dtype=np.uint8)
    # Fixed-point coordinates (4 fractional bits) keep sub-pixel boxes exact.
    shift = 4
    pts = [np.round(p * (1 << shift)).astype(np.int32) for p in polygons]
    cv2.fillPoly(mask, pts, 1, cv2.LINE_8, shift)
    if not mask.any():
        return None
    background = image[mask.astype(bool)].astype(np.float32).mean(axis=0)
    color = _object_color(background, rng)
    shade = rng.uniform(0.75, 1.0)
    layer = np.empty_like(image)
    layer[:] = color
    # A vertical shading gradient makes objects look less flat than the clutter.
    ramp = np.linspace(shade, 1.0, height, dtype=np.float32)[:, None, None]
    layer = np.clip(layer.astype(np.float32) * ramp, 0, 255).astype(np.uint8)
    edge = np.clip(np.asarray(color, np.float32) * 0.45, 0, 255).astype(np.uint8)
    cv2.polylines(layer, pts, True, edge.tolist(), 1, cv2.LINE_8, shift)
    keep = mask.astype(bool)
    image[keep] = layer[keep]
    return keep


def _clutter_color(base: float, rng: np.random.Generator):
    return [float(np.clip(base + rng.uniform(-45, 45), 0, 255)) for _ in range(3)]


def _object_color(background: np.ndarray, rng: np.random.Generator):
    """A saturated colour that differs clearly from the mean background under the object."""
    for _ in range(20):
        color = rng.uniform(0, 255, size=3)
        color[rng.integers(0, 3)] = rng.uniform(0, 50)
        color[rng.integers(0, 3)] = rng.uniform(200, 255)
        if np.abs(color - background).sum() > 150:
            break
    return [int(c) for c in color]


def _silhouette(name, x0, y0, x1, y1, rng):
    """Polygons (float Nx2 arrays of x, y) of a class silhouette filling the box."""
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if name == "circle":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return [np.stack([cx + w / 2 * np.cos(t), cy + h / 2 * np.sin(t)], 1)]
    if name == "square":
        return [np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])]
    if name == "triangle":
        # Apex on a random side so orientation is not a cue for the class.
        side = int(rng.integers(0, 4))
        tri = {
            0: [[cx, y0], [x1, y1], [x0, y1]],
            1: [[x0, y0], [x1, y0], [cx, y1]],
            2: [[x0, cy], [x1, y0], [x1, y1]],
            3: [[x0, y0], [x1, cy], [x0, y1]],
        }[side]
        return [np.array(tri, dtype=np.float64)]
    if name == "cross":
        a, b = cx - w * 0.17, cx + w * 0.17
        c, d = cy - h * 0.17, cy + h * 0.17
        xs = [a, b, b, x1, x1, b, b, a, a, x0, x0, a]
        ys = [y0, y0, c, c, d, d, y1, y1, d, d, c, c]
        return [np.stack([xs, ys], 1).astype(np.float64)]
    if name == "star":
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False) - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        x = np.cos(t) * r
        y = np.sin(t) * r
        # Scale the unit star so its own bounding box fills the box exactly.
        x = x0 + (x - x.min()) / (x.max() - x.min()) * w
        y = y0 + (y - y.min()) / (y.max() - y.min()) * h
        return [np.stack([x, y], 1)]
    raise ValueError(f"shape {name!r} is unknown: expected one of {CLASSES}")
