"""Augmentation pipelines (albumentations), applied to image and mask together.

`none` is the original study's setting. `basic` adds what does not change a label: flips,
90-degree rotations, a small affine warp, faint brightness/contrast jitter and noise.
Brightness stays within a few percent on purpose: the intensity label (intermediate vs
positive) *is* a brightness, so a strong jitter would teach the model to ignore it.
"""

from __future__ import annotations

import os

import cv2

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network
import albumentations as A  # noqa: E402

from mtl.config import check_registry  # noqa: E402


def _basic() -> A.Compose:
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.05, 0.05),
                rotate=(-15, 15),
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.5,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.03, contrast_limit=0.05, p=0.3),
            A.GaussNoise(std_range=(0.01, 0.03), p=0.3),
        ]
    )


# TrainConfig.augment: name -> a pipeline (None: no augmentation).
AUGMENTATIONS = {"none": lambda: None, "basic": _basic}
check_registry("augment", AUGMENTATIONS)


def build_augmentation(name: str) -> A.Compose | None:
    if name not in AUGMENTATIONS:
        raise ValueError(
            f"unknown augmentation {name!r}; expected one of {', '.join(AUGMENTATIONS)}"
        )
    return AUGMENTATIONS[name]()
