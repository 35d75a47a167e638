"""Figures the CLI draws: `spothistory --plot`.

matplotlib is imported here, on first use, with the Agg backend: a command run
over SSH or in CI has no display, and the import costs a second that every
other command should not pay.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path


def price_history(
    series: dict[str, list[tuple[dt.datetime, float]]], path: Path, title: str
) -> None:
    """One step line per zone (a price holds until the next change), into `path`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    try:
        for zone, points in sorted(series.items()):
            if points:
                times, prices = zip(*points, strict=True)
                ax.step(times, prices, where="post", label=zone)
        ax.set_title(title)
        ax.set_ylabel("USD/hour")
        ax.grid(alpha=0.3)
        if series:
            ax.legend(loc="best", fontsize="small")
        fig.autofmt_xdate()
        fig.savefig(path, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
