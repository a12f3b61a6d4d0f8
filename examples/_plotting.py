"""matplotlib for the examples' ``--plot``: imported lazily, headless, with a clear error if missing."""

from __future__ import annotations

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
    """Write ``fig`` as a compact PNG and say where."""
    fig.savefig(path, dpi=80, pil_kwargs={"optimize": True})
    pyplot().close(fig)
    print(f"figure written to {path}")
