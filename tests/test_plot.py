"""Plots: each returns a Figure with the expected axes and saves to PNG without a display."""

import matplotlib

matplotlib.use("Agg")  # headless; galton.plot itself never picks a backend

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from galton import plot  # noqa: E402

RNG = np.random.default_rng(0)


def test_corner_with_reference_and_truth_draws_the_lower_triangle(tmp_path):
    samples = RNG.normal(size=(2000, 3))
    reference = jnp.asarray(RNG.normal(0.3, 1.2, size=(1500, 3)))  # JAX arrays are accepted too
    fig = plot.corner(samples, reference=reference, truth=[0.0, 1.0, -1.0], names=["a", "b", "c"])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 6  # d(d+1)/2
    assert [ax.get_xlabel() for ax in fig.axes[-3:]] == ["a", "b", "c"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["galton", "reference"]
    fig.savefig(tmp_path / "corner.png")
    assert (tmp_path / "corner.png").stat().st_size > 10_000


def test_corner_of_one_parameter_is_one_histogram(tmp_path):
    fig = plot.corner(RNG.normal(size=500), truth=0.0)
    assert len(fig.axes) == 1
    fig.savefig(tmp_path / "corner1.png")


def test_corner_falls_back_to_points_for_few_or_degenerate_samples():
    samples = np.column_stack([RNG.normal(size=20), np.ones(20)])  # 20 draws, one constant column
    assert len(plot.corner(samples).axes) == 3


def test_corner_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="reference has 2 parameters"):
        plot.corner(np.zeros((10, 3)), reference=np.zeros((10, 2)))
    with pytest.raises(ValueError, match=r"truth must have shape \(3,\)"):
        plot.corner(np.zeros((10, 3)), truth=[0.0, 1.0])


def test_coverage_draws_curve_band_and_diagonal(tmp_path):
    levels = np.linspace(0, 1, 11)
    fig = plot.coverage(levels, levels**1.2, band=(levels**1.2 - 0.05, levels**1.2 + 0.05))
    assert len(fig.axes) == 1
    assert len(fig.axes[0].lines) == 2  # diagonal and curve
    fig.savefig(tmp_path / "coverage.png")


def test_sbc_ranks_has_one_histogram_per_parameter_and_counts_every_simulation(tmp_path):
    ranks = RNG.integers(0, 101, size=(300, 5))
    fig = plot.sbc_ranks(ranks, n_bins=10, max_rank=100, names=list("abcde"))
    assert len(fig.axes) == 5
    heights = fig.axes[0].patches[-1].get_data().values  # the stairs of the first histogram
    assert heights.sum() == 300 and len(heights) == 10
    fig.savefig(tmp_path / "sbc.png")
    with pytest.raises(ValueError, match="above max_rank"):
        plot.sbc_ranks(ranks, max_rank=50)


def test_loss_curves_marks_the_best_epoch(tmp_path):
    history = {"train_loss": [3.0, 2.0, 1.5, 1.4], "validation_loss": [3.1, 2.2, 1.9, 2.0], "best_epoch": 2}
    fig = plot.loss_curves(history)
    assert len(fig.axes) == 1
    assert len(fig.axes[0].lines) == 3
    fig.savefig(tmp_path / "loss.png")
    with pytest.raises(ValueError, match="validation_loss"):
        plot.loss_curves({"train_loss": [1.0]})


def test_drawing_into_a_given_figure():
    fig = Figure()
    assert plot.loss_curves({"train_loss": [1.0], "validation_loss": [1.0]}, fig=fig) is fig
