"""Using a trained model: predict the digit in a user's pictures, and evaluate on a test set."""

import numpy as np

from .image import load_digit


def predict_digits(model, paths):
    """Preprocess each picture like MNIST and classify it.

    Returns ``(probabilities (N, 10), images (N, 28, 28, 1))``: the images are what the model saw.
    """
    images = np.stack([load_digit(p) for p in paths])
    return model.predict(images), images


def evaluate(model, x, y, classes=10, batch_size=1000):
    """Accuracy, per-class accuracy, the confusion matrix (rows: true, columns: predicted), and
    the predicted classes and probabilities of every image."""
    probs = model.predict(x, batch_size)
    pred = probs.argmax(axis=1)
    confusion = np.zeros((classes, classes), np.int64)
    np.add.at(confusion, (y, pred), 1)
    per_class = np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)
    return {"accuracy": float((pred == y).mean()), "per_class": per_class, "confusion": confusion,
            "predicted": pred, "probabilities": probs}
