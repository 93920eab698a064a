"""The figures' files: JSON in the schema of the published results, and their plots.

A panel is a dict in the published schema: ``"Metric"``, the x axis (``"VQ Bitrate":
["12 bits", ...]``, ``"Sampling Rate": ["8 kbits/sec", ...]`` (Figure 1's total bitrates)
or ``"T": ["1", ...]``), then per method ``"Mean (AVQ)"``,
``"Quantile Low (AVQ)"``, ``"Quantile High (AVQ)"``. The files written here add
``"Settings"``: the mode, sizes and versions that produced them.

The published panels, from the original repository's ``Results/``, are bundled as data in
``published_results.json`` (``{"source": ..., "figures": {"fig2": {file name: panel}}}``);
``published_panels`` reads them, or the same files from a folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from stochastic_vq import __version__

QUANTILES = (0.025, 0.975)  # the published bands
SETTINGS_KEY = "Settings"
PUBLISHED_RESULTS = Path(__file__).with_name("published_results.json")


class PublishedError(ValueError):
    """Published panels that cannot be read; the message is one line."""


def published_panels(figure: str, source: Path = PUBLISHED_RESULTS) -> dict[str, dict]:
    """The published panels of ``figure`` (``"fig2"``, ...) by file name.

    ``source``: the bundled ``published_results.json`` (default), or a folder holding the
    published JSON files under their original names (those of the figure found there).
    PublishedError if the folder is missing or holds none of the figure's files.
    """
    bundled = json.loads(PUBLISHED_RESULTS.read_text(encoding="utf-8"))["figures"][figure]
    if source == PUBLISHED_RESULTS:
        return bundled
    if not source.is_dir():
        raise PublishedError(f"{source}: not a folder")
    panels = {}
    for name in bundled:
        if (source / name).is_file():
            try:
                panels[name] = json.loads((source / name).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                raise PublishedError(f"{source / name}: cannot be read as JSON ({error})"
                                     ) from None
    if not panels:
        raise PublishedError(f"{source} holds none of {figure}'s published files "
                             f"({', '.join(bundled)})")
    return panels


def summary(values: list[float]) -> tuple[float, float, float]:
    """(mean, 2.5 % quantile, 97.5 % quantile) of one point's values over the seeds."""
    low, high = np.quantile(values, QUANTILES)
    return float(np.mean(values)), float(low), float(high)


def add_curve(panel: dict, name: str, values: list[list[float]]) -> None:
    """Add the mean and quantiles over seeds of ``name``; values[point][seed]."""
    stats = [summary(point) for point in values]
    panel[f"Mean ({name})"] = [s[0] for s in stats]
    panel[f"Quantile Low ({name})"] = [s[1] for s in stats]
    panel[f"Quantile High ({name})"] = [s[2] for s in stats]


def bitrate_axis(bits: tuple[int, ...]) -> list[str]:
    """The published x axis of the bitrate figures: ["12 bits", ...]."""
    return [f"{b} bits" for b in bits]


def run_settings(**settings) -> dict:
    """``settings`` with the library and torch versions, for a file's ``"Settings"``."""
    return {**settings, "library_version": __version__, "torch_version": str(torch.__version__)}


def save_panels(panels: dict[str, dict], out: Path, figure: str, settings: dict, *,
                label_key: str | None = None, title: str | None = None,
                published: dict[str, dict] | None = None) -> list[Path]:
    """Write each panel's JSON (with ``settings``) and one PDF + PNG, a subplot per panel.

    ``published``: published panels by file name (``published_panels``); the curves of
    those named as ours are drawn dashed beside ours.
    """
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, panel in panels.items():
        path = out / name
        path.write_text(json.dumps({**panel, SETTINGS_KEY: settings}, indent=1) + "\n")
        written.append(path)
    fig = draw_panels(panels, label_key, title, published or {})
    paths = [(out / figure).with_suffix(".pdf"), (out / figure).with_suffix(".png")]
    for path in paths:
        fig.savefig(path, dpi=120, metadata={"CreationDate": None} if path.suffix == ".pdf"
                    else None)
    return written + paths


def draw_panels(panels: dict[str, dict], label_key: str | None, title: str | None,
                published: dict[str, dict]) -> Figure:
    """Mean curves with quantile bands, one subplot per panel, and the published curves of
    the panels named in ``published``, dashed."""
    fig = Figure(figsize=(4.5 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, panel) in zip(axes, panels.items()):
        x = _x_values(panel)
        ticks = set(x)
        for method in curve_names(panel):
            line, = ax.plot(x, panel[f"Mean ({method})"], marker="o", markersize=3,
                            label=method)
            ax.fill_between(x, panel[f"Quantile Low ({method})"],
                            panel[f"Quantile High ({method})"], color=line.get_color(),
                            alpha=0.2)
            if method in curve_names(published.get(name, {})):
                reference = published[name]
                ticks |= set(_x_values(reference))
                ax.plot(_x_values(reference), reference[f"Mean ({method})"], linestyle="--",
                        color=line.get_color(), label=f"{method}, published")
        _label_axes(ax, panel, label_key, title, sorted(ticks))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def curve_names(panel: dict) -> list[str]:
    """The methods of a panel, in its order: ``"AVQ"`` for a ``"Mean (AVQ)"`` key."""
    return [key[len("Mean ("):-1] for key in panel if key.startswith("Mean (")]


def _x_values(panel: dict) -> list[float]:
    """The x values of a panel: bitrates from "12 bits", ... or "8 kbits/sec", ..., or
    ranks T from "1", ..."""
    if "Sampling Rate" in panel:  # Figure 1's key for its total bitrates
        return [float(label.split()[0]) for label in panel["Sampling Rate"]]
    labels = panel["VQ Bitrate"] if "VQ Bitrate" in panel else panel["T"]
    return [int(label.split()[0]) for label in labels]


def _label_axes(ax, panel: dict, label_key: str | None, title: str | None,
                ticks: list[int]) -> None:
    if "T" in panel:
        ax.set(xlabel="T", ylabel="recall@T", xscale="log", ylim=(0, 1.02))
        ax.set_title(title or "")
        return
    metric = panel["Metric"]
    if metric == "MSE":
        ax.set(ylabel="MSE (sum over dimensions)", yscale="log")
    else:
        ax.set(ylabel=f"{metric} (dB)" if metric in ("Peak SNR", "pSNR") else metric)
    if "Sampling Rate" in panel:  # Figure 1: kbit/s, labelled "8", "9.6", ...
        ax.set(xlabel="total bitrate (kbit/s)", xticks=ticks,
               xticklabels=[f"{tick:g}" for tick in ticks])
    else:
        ax.set(xlabel="total bitrate (bits per vector)", xticks=ticks)
    ax.set_title(f"{label_key}: {panel[label_key]}" if label_key else
                 f"{metric}, {title}" if title else metric)
