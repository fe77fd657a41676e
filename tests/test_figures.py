"""Figures: each is drawn from real arrays and saved as a PNG."""

import numpy as np

from pipeline.reports import figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_training_curves_have_loss_and_accuracy(tmp_path):
    history = {"iteration": [100, 200], "train_loss": [1.0, 0.5], "train_accuracy": [0.6, 0.8],
               "val_loss": [0.9, 0.6], "val_accuracy": [0.7, 0.75]}  # fmt: skip
    figure = figures.training_curves(history)
    assert [axes.get_title() for axes in figure.axes] == ["loss", "accuracy"]
    assert [len(axes.lines) for axes in figure.axes] == [2, 2]
    figures.save(figure, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)


def test_confusion_matrix_shows_every_count(tmp_path):
    confusion = np.arange(9).reshape(3, 3)
    figure = figures.confusion_heatmap(confusion, ["ant", "bee", "cow"])
    texts = sorted(int(text.get_text()) for text in figure.axes[0].texts)
    assert texts == list(range(9))
    assert [label.get_text() for label in figure.axes[0].get_xticklabels()] == ["ant", "bee", "cow"]
    figures.save(figure, tmp_path / "figures" / "confusion.png")
    assert (tmp_path / "figures" / "confusion.png").read_bytes().startswith(PNG_MAGIC)


def test_misclassified_grid_titles_true_and_predicted_and_draws_with_none(tmp_path):
    images = np.arange(5, dtype=np.float32)[:, None, None] / 10 * np.ones((5, 28, 28), np.float32)
    labels = np.array([1, 2, 3, 4, 5])
    predictions = np.array([1, 7, 3, 9, 5])
    names = [f"c{index}" for index in range(10)]
    figure = figures.misclassified_grid(images, labels, predictions, names, "Toys")
    assert [text.get_text() for text in figure.axes[0].texts] == ["c2 → c7", "c4 → c9"]
    shown = np.asarray(figure.axes[0].images[0].get_array())  # the wrong ones' pixels, no others
    assert np.isclose(shown.sum(), 784 * (0.1 + 0.3))
    assert "misclassified Toys test images" in figure.get_suptitle()
    assert "2 shown, 2 in all" in figure.get_suptitle()
    none = figures.misclassified_grid(images, labels, labels, names, "Toys")
    assert "0 shown, 0 in all" in none.get_suptitle()
    figures.save(none, tmp_path / "none.png")
    assert (tmp_path / "none.png").read_bytes().startswith(PNG_MAGIC)
