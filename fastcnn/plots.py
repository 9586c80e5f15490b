"""Pictures of a model's results: its wrong guesses, and the confusion matrix (PNG, no display)."""

import matplotlib

matplotlib.use("Agg")  # files only: works on a machine with no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .fileio import atomic_write, check_png_name  # noqa: E402


def _save(fig, path):
    check_png_name(path)
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_errors(path, images, true, predicted, probabilities, class_names, most=36):
    """A grid of up to ``most`` wrongly classified images (greyscale (N, H, W, 1) or RGB (N, H, W, 3),
    floats in [0, 1] or uint8 pixels), each titled with its guess and truth."""
    wrong = np.flatnonzero(predicted != true)[:most]
    cols = 6
    rows = max(1, -(-len(wrong) // cols))
    # Wide enough for the longest title at 8 points ("guess automobile (100%)"), so titles never overlap.
    width = max(1.6, 0.08 * len(f"guess {max(class_names, key=len)} (100%)"))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * width, rows * (width + 0.3)), squeeze=False,
                             layout="constrained")  # the suptitle above the images' titles, even in one row
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), wrong):
        image = images[i] / 255 if images.dtype == np.uint8 else images[i]  # an image folder's pixels
        if images.shape[-1] == 3:
            ax.imshow(np.clip(image, 0, 1))
        else:
            ax.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=1)
        p = probabilities[i, predicted[i]]
        ax.set_title(f"guess {class_names[predicted[i]]} ({p:.0%})\ntrue {class_names[true[i]]}",
                     fontsize=8, color="firebrick")
    count = int((predicted != true).sum())
    fig.suptitle(f"no wrong guesses among {len(true):,}" if not count else
                 f"{count:,} wrong of {len(true):,}" + (f"; the first {len(wrong)}" if count > len(wrong) else ""),
                 fontsize=10)
    _save(fig, path)


def plot_confusion(path, confusion, class_names):
    """The confusion matrix: true class down, predicted across, counts in the cells."""
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 0.8 + 0.6 * k))
    shade = np.log1p(confusion)  # a log scale, so the few big mistakes don't hide the many small ones
    top = max(float(shade.max()), 1.0)
    ax.imshow(shade, cmap="Blues", vmin=0, vmax=top)  # from zero: equal counts look equal
    for t in range(k):
        for p in range(k):
            if confusion[t, p]:
                color = "white" if shade[t, p] > 0.6 * top else "black"  # readable on light and dark cells
                ax.text(p, t, str(confusion[t, p]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(k), class_names, rotation=45 if max(map(len, class_names)) > 2 else 0, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {np.trace(confusion) / confusion.sum():.2%}")
    _save(fig, path)


def plot_history(path, history, title=None, validation="validation"):
    """Loss and accuracy per epoch, training beside validation (where the run had validation data),
    which ``validation`` names (say, "test set (as validation)")."""
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, name in ((loss_ax, "loss", "loss"), (acc_ax, "train_acc", "accuracy")):
        ax.plot(epochs, [h[key] for h in history], "o-", label="training")
        val_key = "val_loss" if key == "loss" else "val_acc"
        val = [(h["epoch"], h.get(val_key)) for h in history]
        val = [(e, v) for e, v in val if v is not None]
        if val:
            ax.plot(*zip(*val), "s-", label=validation)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)  # one epoch: "1", not 0.96 to 1.04
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if val:
        best = max(val, key=lambda ev: ev[1])
        acc_ax.set_title(f"best {validation} accuracy {best[1]:.2%} (epoch {best[0]})", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
