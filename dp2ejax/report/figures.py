"""Figures for reports: matplotlib on the Agg canvas, rendered to deterministic PNG bytes.

No pyplot: a :class:`matplotlib.figure.Figure` with a ``FigureCanvasAgg`` leaves the user's
backend and open figures alone. Each figure is drawn under matplotlib's default style (a user's
``matplotlibrc`` does not change reports), at a fixed size and resolution, and saved without
the ``Software`` metadata, so the same data gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

FIGSIZE_INCHES: tuple[float, float] = (6.4, 3.6)
DPI: int = 100
PNG_SIGNATURE: bytes = b"\x89PNG\r\n\x1a\n"


@dataclasses.dataclass(frozen=True)
class Image:
    """One figure of a report: a file name stem, its alt text, a caption and the PNG bytes."""

    name: str
    alt: str
    caption: str
    png: bytes


def _matplotlib():
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("dp2ejax.report draws its figures with matplotlib, which is not "
                          "installed: pip install matplotlib") from err
    return matplotlib


def draw_image(name: str, alt: str, caption: str, draw: Callable[[Any, Sequence[Any]], None],
               *, ncols: int = 1, figsize: tuple[float, float] = FIGSIZE_INCHES) -> Image:
    """Draws a figure with ``draw(fig, axes)`` and returns it as an :class:`Image`.

    Args:
      name: file name stem (``figures/<name>.png``).
      alt: alt text of the image (what it shows, for readers without it).
      caption: the caption below it.
      draw: called with the ``Figure`` and its ``ncols`` axes, side by side.
      ncols: number of axes.
      figsize: size in inches (the PNG is ``DPI`` pixels per inch).

    Returns:
      The :class:`Image`.

    Example:
      >>> image = draw_image("line", "a line", "", lambda fig, axes: axes[0].plot([0, 1]))
      >>> image.png[:8] == PNG_SIGNATURE
      True
    """
    _matplotlib()
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.style.context("default"):
        fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, ncols, squeeze=False)[0]
        draw(fig, list(axes))
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return Image(name=name, alt=alt, caption=caption, png=buffer.getvalue())


def as_floats(values: Any) -> np.ndarray:
    """A 1-D float64 array; ``None`` entries (JSON's NaN) become NaN."""
    if values is None:
        return np.zeros(0)
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def positive(values: np.ndarray) -> np.ndarray:
    """``values`` with non-positive and non-finite entries replaced by NaN (for log axes)."""
    values = np.asarray(values, np.float64)
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def use_log_scale(ax, arrays: Sequence[np.ndarray], *, min_span: float = 20.0) -> bool:
    """Sets a log y-axis when every finite value is positive and they span ``min_span``x."""
    finite = [a[np.isfinite(a)] for a in arrays]
    finite = np.concatenate(finite) if finite else np.zeros(0)
    if finite.size == 0 or finite.min() <= 0 or finite.max() < min_span * finite.min():
        return False
    ax.set_yscale("log")
    return True


def color(index: int) -> str:
    """The ``index``-th color of matplotlib's default cycle (``C0`` … ``C9``)."""
    return f"C{index % 10}"
