"""Embedded datasets: procedural shapes on cluttered backgrounds (see `shapes`)."""

from . import shapes
