"""Where the patches of a specimen image lie: the original study's 5 x 3 grid.

A 1388 x 1040 I3A specimen image is cut into 15 patches of 384 x 384 with horizontal stride
251 and vertical stride 328, so neighbours overlap. Patch index k is column-major:
row = k % rows, column = k // rows (the I3A task-2 patch numbering).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class PatchGrid:
    size: int = 384
    cols: int = 5
    rows: int = 3
    stride_x: int = 251
    stride_y: int = 328

    def __post_init__(self) -> None:
        for name in ("size", "cols", "rows", "stride_x", "stride_y"):
            if getattr(self, name) <= 0:
                raise ValueError(f"grid {name} must be positive, got {getattr(self, name)}")

    @property
    def width(self) -> int:
        return (self.cols - 1) * self.stride_x + self.size

    @property
    def height(self) -> int:
        return (self.rows - 1) * self.stride_y + self.size

    def __len__(self) -> int:
        return self.cols * self.rows

    def offset(self, k: int) -> tuple[int, int]:
        """(top, left) pixel of patch k."""
        if not 0 <= k < len(self):
            raise IndexError(f"patch index {k} outside the {self.cols}x{self.rows} grid")
        return (k % self.rows) * self.stride_y, (k // self.rows) * self.stride_x

    def cut(self, image: np.ndarray, k: int) -> np.ndarray:
        top, left = self.offset(k)
        return image[top : top + self.size, left : left + self.size]

    def scaled_to(self, size: int) -> PatchGrid:
        """The same layout for another patch size (strides scale with it)."""
        scale = size / self.size
        return PatchGrid(
            size=size,
            cols=self.cols,
            rows=self.rows,
            stride_x=max(1, round(self.stride_x * scale)),
            stride_y=max(1, round(self.stride_y * scale)),
        )
