"""Regenerate galton/tasks/data/*.npz from the sbibm 1.1.0 wheel's observation files.

The standard observations came from torch/numpy RNG streams JAX cannot reproduce, so galton
ships them. Usage::

    pip download --no-deps sbibm==1.1.0 -d /tmp/sbibm && (cd /tmp/sbibm && unzip -q -o *.whl)
    python bench/make_task_data.py /tmp/sbibm

Only observations and true parameters are kept (a few kB); the reference posterior samples
stay in the wheel.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

# galton data file -> (sbibm task directory, {npz array: csv file name})
FILES = {
    "two_moons": ("two_moons", {"observations": "observation.csv"}),
    "gaussian_linear": ("gaussian_linear", {"observations": "observation.csv"}),
    "gaussian_linear_uniform": ("gaussian_linear_uniform", {"observations": "observation.csv"}),
    "gaussian_mixture": ("gaussian_mixture", {"observations": "observation.csv"}),
    "slcp": ("slcp", {"observations": "observation.csv", "observations_distractors": "observation_distractors.csv"}),
    "bernoulli_glm": ("bernoulli_glm", {"observations": "observation.csv", "observations_raw": "observation_raw.csv"}),
    "sir": ("sir", {"observations": "observation.csv"}),
    "lotka_volterra": ("lotka_volterra", {"observations": "observation.csv"}),
}
N_OBSERVATIONS = 10


def read_row(path: Path) -> np.ndarray:
    """One-row CSV with a header -> float32 vector."""
    return np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=1).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel_dir", type=Path, help="directory holding the unpacked sbibm wheel (contains sbibm/)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "galton" / "tasks" / "data")
    args = parser.parse_args()
    root = args.wheel_dir / "sbibm" / "tasks"
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (directory, arrays) in FILES.items():
        obs_dirs = [root / directory / "files" / f"num_observation_{k}" for k in range(1, N_OBSERVATIONS + 1)]
        out = {key: np.stack([read_row(d / csv) for d in obs_dirs]) for key, csv in arrays.items()}
        out["true_parameters"] = np.stack([read_row(d / "true_parameters.csv") for d in obs_dirs])
        np.savez_compressed(args.out / f"{name}.npz", **out)
        print(name, {k: v.shape for k, v in out.items()})


if __name__ == "__main__":
    main()
