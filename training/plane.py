"""The 2-D plane that latent figures (and the explorer's scatter) are drawn in: the latent
itself when it is 2-D, else the top two principal axes of the points, stated on the figure.
Its own module so that analysis and the explorer's data file both use it without importing
each other."""

from __future__ import annotations

import numpy as np


class Plane:
    """The 2-D plane figures are drawn in: the latent itself (D = 2) or its top two principal axes."""

    def __init__(self, points: np.ndarray) -> None:
        self.dim = points.shape[1]
        self.center = points.mean(0)
        if self.dim == 2:
            self.axes = np.eye(2)
            self.explained = 1.0
        else:
            _, s, vt = np.linalg.svd(points - self.center, full_matrices=False)
            self.axes = vt[:2].T  # D x 2
            self.explained = float((s[:2] ** 2).sum() / (s**2).sum())

    @property
    def is_projection(self) -> bool:
        return bool(self.dim != 2)

    def project(self, points: np.ndarray) -> np.ndarray:
        if not self.is_projection:
            return points
        projected: np.ndarray = (points - self.center) @ self.axes
        return projected

    def lift(self, plane_points: np.ndarray) -> np.ndarray:
        if not self.is_projection:
            return plane_points.astype(np.float32)
        lifted: np.ndarray = (self.center + plane_points @ self.axes.T).astype(np.float32)
        return lifted

    def label(self) -> str:
        if self.is_projection:
            return (
                f"PCA plane of the {self.dim}-D latents ({100 * self.explained:.0f}% of variance)"
            )
        return "2-D latent"

    def axis_names(self) -> tuple[str, str]:
        return ("PC 1", "PC 2") if self.is_projection else ("z[0]", "z[1]")
