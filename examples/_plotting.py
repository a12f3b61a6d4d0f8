"""matplotlib for the examples' ``--plot``: imported lazily, headless, with a clear error if missing."""

from __future__ import annotations

import io
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the file-only Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit('--plot needs matplotlib: pip install "higher-core[examples]" '
                         "(or pip install matplotlib)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str) -> None:
    """Write ``fig`` as a compact PNG (64 colours, about 30 KB for the demo's figure) and say where."""
    from PIL import Image  # matplotlib's own dependency

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    pyplot().close(fig)
    image = Image.open(buffer).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    image.save(path, format="png", optimize=True)
    print(f"figure written to {path}")
