"""The four head categories of BlindSight, as stable small integers shared by masks, kernel and head maps."""

from __future__ import annotations

from enum import IntEnum


class Category(IntEnum):
    """Per-head attention category. The integer value is what kernels and metadata tensors carry."""

    DENSE = 0  # the model's own mask
    SINK = 1  # image query: earlier text, sinks of earlier images and of its own image, itself
    INTRA_IMAGE = 2  # image query: earlier text, its own image
    INTRA_IMAGE_SINK = 3  # intra_image plus the sinks of every earlier image

    @property
    def label(self) -> str:
        """The name used in configs, head maps and reports (``intra_image_sink``)."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | int | Category) -> Category:
        """Accept ``"intra_image"``, ``2`` or ``Category.INTRA_IMAGE``; a clear error otherwise."""
        if isinstance(value, cls):
            return value
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[str(value).upper()]
        except KeyError:
            allowed = ", ".join(c.label for c in cls)
            raise ValueError(f"unknown head category {value!r}; allowed: {allowed}") from None


SPARSE_CATEGORIES: tuple[Category, ...] = (Category.SINK, Category.INTRA_IMAGE, Category.INTRA_IMAGE_SINK)
