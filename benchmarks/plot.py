"""Bar charts of the ratio tables in benchmarks/RESULTS.md (one PNG per section: CPU, CUDA, ...).

Each chart has two panels, time and peak-memory ratios (competitor / higher-core; above 1:
higher-core is faster or smaller), one group of bars per workload, one bar per competitor.
Needs matplotlib (``pip install "higher-core[examples]"``).

Usage: python benchmarks/plot.py [--results benchmarks/RESULTS.md] [--out docs/_static]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
Ratios = dict[str, dict[str, dict[str, float]]]  # panel -> workload -> competitor -> ratio


def read_tables(text: str) -> dict[str, Ratios]:
    """The ratio columns of each ``## <section>``'s results table."""
    sections: dict[str, Ratios] = {}
    section, header = None, None
    for line in text.splitlines():
        if line.startswith("## "):
            section, header = line[3:].strip(), None
        elif line.startswith("|") and section:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None and "competitor" in cells and "time ratio" in cells:
                header = cells
            elif header and not set(cells[0]) <= set("-: ") and len(cells) == len(header):
                row = dict(zip(header, cells))
                for panel, column in (("time", "time ratio"), ("peak memory", "memory ratio")):
                    match = re.fullmatch(r"([\d.]+)x", row[column])
                    if match and row["competitor"] != "higher_core":
                        workload = row["workload"].split(" (")[0]
                        sections.setdefault(section, {}).setdefault(panel, {}).setdefault(
                            workload, {})[row["competitor"]] = float(match.group(1))
            elif header and not line.startswith("|"):
                header = None
        else:
            header = None if not line.startswith("|") else header
    return sections


def png_name(section: str) -> str:
    """The file a section's plot is written to: ``bench_<its heading in lower case, as a slug>.png``."""
    return f"bench_{re.sub(r'[^a-z0-9]+', '_', section.lower()).strip('_')}.png"


def plot_section(name: str, ratios: Ratios, out: Path) -> Path:
    """One PNG: a panel per ratio, bars grouped by workload."""
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit('benchmarks/plot.py needs matplotlib: pip install "higher-core[examples]"') from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(ratios)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        workloads = list(ratios[panel])
        competitors = sorted({c for w in workloads for c in ratios[panel][w]})
        width = 0.8 / len(competitors)
        for i, competitor in enumerate(competitors):
            xs = [j + (i - (len(competitors) - 1) / 2) * width for j in range(len(workloads))]
            ys = [ratios[panel][w].get(competitor, float("nan")) for w in workloads]
            bars = ax.bar(xs, ys, width, label=competitor)
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(workloads)), workloads, fontsize=8)
        ax.set_title(f"{panel} ratio (competitor / higher-core)", fontsize=9)
        ax.set_ylim(0, max(1.2, 1.15 * max(max(r.values()) for r in ratios[panel].values())))
        ax.spines[["top", "right"]].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"benchmarks/RESULTS.md, {name}: above 1, higher-core is faster / smaller", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path = out / png_name(name)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "_static")
    args = parser.parse_args(argv)
    sections = read_tables(args.results.read_text())
    if not sections:
        raise SystemExit(f"no ratio table (columns 'competitor', 'time ratio') in {args.results}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, ratios in sections.items():
        print(plot_section(name, ratios, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
