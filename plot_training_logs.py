"""Plot the log.json of training runs written by train_additive_vq.py, train_product_vq.py, ...

    python plot_training_logs.py RUN_DIR [RUN_DIR ...] [--compare-out FILE]

For each RUN_DIR it writes
- RUN_DIR/training_log.pdf: the loss curve and the replacement counts, then one page per
  logged window with a log10(usage + 1) bar chart per codebook (as the original);
- RUN_DIR/training_summary.png: a one-page summary (loss, replacements, last usage
  snapshot, settings and eval_mse).
Given several runs it also writes their loss curves in one plot to --compare-out
(default: loss_comparison.png in the current directory).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from stochastic_vq.runfiles import LOG_FILE


class LogError(Exception):
    """A log.json that is missing or cannot be plotted; the message is one line."""


def read_log(run_dir: str | Path) -> dict:
    """Read and check RUN_DIR/log.json; LogError if it is missing or malformed.

    Returns the log with numpy views added: ``steps`` (W,), ``losses`` (W,) and
    ``usages`` (W, M, K) of the W logged windows.
    """
    path = Path(run_dir) / LOG_FILE
    try:
        log = json.loads(path.read_text())
    except FileNotFoundError:
        raise LogError(f"{path}: not found (is {run_dir} a run directory?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LogError(f"{path}: cannot be read as JSON ({error})") from None
    try:
        windows = log["windows"]
        log["steps"] = np.array([int(w["step"]) for w in windows])
        log["losses"] = np.array([float(w["loss"]) for w in windows])
        log["usages"] = np.array([w["usage"] for w in windows], dtype=float)  # (W, M, K)
        log["replacements"] = [(int(r["step"]), [int(n) for n in r["replaced"]])
                               for r in log["replacements"]]
        config = log["config"]
        log["name"] = f"{config['method'].upper()} {config['stages']}x{config['bits']} bits"
    except (KeyError, TypeError, ValueError) as error:
        raise LogError(f"{path}: not a training log ({type(error).__name__}: {error})") from None
    if not windows or log["usages"].ndim != 3:
        raise LogError(f"{path}: holds no logged window yet")
    return log


def plot_loss(ax, log: dict, label: str | None = None) -> None:
    """Mean training loss per window against the step, and the final eval_mse if known."""
    line, = ax.plot(log["steps"], log["losses"], marker=".", label=label or "training loss")
    if log.get("eval_mse") is not None:
        ax.axhline(log["eval_mse"], color=line.get_color(), linestyle="--", linewidth=1,
                   label=None if label else f"eval MSE {log['eval_mse']:.4f}")
    ax.set(xlabel="step", ylabel="MSE per dimension")
    ax.grid(alpha=0.3)
    ax.legend()


def plot_replacements(ax, log: dict) -> None:
    """Codewords replaced at each replacement step, stacked by codebook."""
    if not log["replacements"]:
        ax.text(0.5, 0.5, "no replacement", ha="center", va="center", transform=ax.transAxes)
    else:
        steps = np.array([step for step, _ in log["replacements"]])
        counts = np.array([replaced for _, replaced in log["replacements"]])  # (R, M)
        width = 0.8 * (np.diff(steps).min() if len(steps) > 1 else max(steps[0], 1))
        bottom = np.zeros(len(steps))
        for codebook, column in enumerate(counts.T):
            ax.bar(steps, column, width=width, bottom=bottom, label=f"codebook {codebook}")
            bottom += column
        if counts.shape[1] <= 8:
            ax.legend(fontsize="small")
    ax.set(xlabel="step", ylabel="codewords replaced", xlim=(0, log["config"]["steps"]))


def plot_usage(axes, usage: np.ndarray, top: float | None = None) -> list:
    """log10(usage + 1) bar chart of each codebook's (K,) usage counts, one axis each.

    usage: (M, K). top: upper y limit (default: from ``usage``). Returns the M artists,
    whose ``set_data`` redraws the bars for another snapshot.
    """
    top = max(np.log10(usage.max() + 1), 1.0) if top is None else top
    artists = []
    for codebook, (ax, counts) in enumerate(zip(axes, usage)):
        # one filled step outline: a bar per codeword, drawn as a single patch
        artists.append(ax.stairs(np.log10(counts + 1), np.arange(len(counts) + 1) - 0.5,
                                 fill=True))
        ax.text(0.01, 0.95, f"codebook {codebook}", transform=ax.transAxes, va="top",
                fontsize="small", bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0})
        ax.set(xlim=(-0.5, len(counts) - 0.5), ylim=(0, 1.15 * top))
        if ax is not axes[-1]:
            ax.tick_params(labelbottom=False)
    axes[-1].set_xlabel("codeword index")
    return artists


def write_pdf(log: dict, path: Path) -> None:
    """The original's multi-page PDF: loss and replacements, then usage per window."""
    with PdfPages(path) as pdf:
        fig = Figure(figsize=(8.27, 8))
        top, bottom = fig.subplots(2, 1)
        plot_loss(top, log)
        top.set_title(log["name"])
        plot_replacements(bottom, log)
        fig.tight_layout()
        pdf.savefig(fig)
        usages = log["usages"]  # (W, M, K)
        fig = Figure(figsize=(8.27, 1.6 + 1.4 * usages.shape[1]))
        axes = fig.subplots(usages.shape[1], 1, squeeze=False)
        artists = plot_usage(axes[:, 0], usages[0], top=max(np.log10(usages.max() + 1), 1.0))
        title = fig.suptitle(" ")
        fig.tight_layout()
        for step, usage in zip(log["steps"], usages):  # one page per snapshot, same layout
            for artist, counts in zip(artists, usage):
                artist.set_data(np.log10(counts + 1))
            title.set_text(f"{log['name']}: log10(usage + 1) up to step {step}")
            pdf.savefig(fig)


def write_summary(log: dict, path: Path) -> None:
    """One PNG page: loss, replacements, last usage snapshot and the run's settings."""
    fig = Figure(figsize=(12, 8))
    grid = fig.add_gridspec(2, 2)
    plot_loss(fig.add_subplot(grid[0, 0]), log)
    plot_replacements(fig.add_subplot(grid[0, 1]), log)
    stages = log["usages"].shape[1]
    usage_grid = grid[1, 0].subgridspec(stages, 1, hspace=0.1)
    axes = [fig.add_subplot(usage_grid[i]) for i in range(stages)]
    plot_usage(axes, log["usages"][-1])
    axes[0].set_title(f"log10(usage + 1) up to step {log['steps'][-1]}")
    text = fig.add_subplot(grid[1, 1])
    text.axis("off")
    text.text(0, 1, _describe(log), va="top", family="monospace", fontsize=9)
    fig.suptitle(log["name"])
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")  # grown to hold all of the settings


def _describe(log: dict) -> str:
    """The settings and results of a run, one ``name value`` line each, names aligned."""
    eval_mse = log.get("eval_mse")
    rows = [(key, value) for key, value in log["config"].items() if value is not None]
    rows += [("", ""), ("eval_mse", f"{eval_mse:.5f}" if eval_mse is not None
                        else "(not evaluated yet)"),
             ("eval on", log.get("eval_on")),
             ("wall time", f"{log.get('wall_time', 0.0):.1f} s"),
             ("versions", f"library {log.get('library_version')}, "
                          f"torch {log.get('torch_version')}")]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:{width}} {value}".rstrip() for key, value in rows)


def write_comparison(logs: dict[str, dict], path: Path) -> None:
    """Loss curves of several runs in one plot; ``logs`` maps a label to a log."""
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for label, log in logs.items():
        eval_mse = log.get("eval_mse")
        suffix = f" (eval {eval_mse:.4f})" if eval_mse is not None else ""
        plot_loss(ax, log, label=f"{label}{suffix}")
    ax.set_title("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    """Plot each run directory; returns the exit status (1 on a missing or corrupt log)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="directory holding a log.json written by a train_*.py script")
    parser.add_argument("--compare-out", default="loss_comparison.png",
                        help="where the loss comparison of several runs goes "
                             "(default: loss_comparison.png in the current directory)")
    args = parser.parse_args(argv)
    try:
        logs = {run_dir: read_log(run_dir) for run_dir in args.run_dirs}
    except LogError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    for run_dir, log in logs.items():
        for name, write in [("training_log.pdf", write_pdf), ("training_summary.png",
                                                              write_summary)]:
            write(log, Path(run_dir) / name)
            print(f"wrote {Path(run_dir) / name}")
    if len(logs) > 1:
        write_comparison({Path(run_dir).name or run_dir: log for run_dir, log in logs.items()},
                         Path(args.compare_out))
        print(f"wrote {args.compare_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
