"""The bundled example: a small MLP on scikit-learn's 8x8 digits (ships inside scikit-learn, no download).

``python -m certify.examples.digits`` retrains it and rewrites ``certify/examples/digits/``:
``digits_mlp.onnx``, ``digits_mlp.pt`` (state dict + architecture + input shape), ``test.npz``
(held-out inputs ``x`` in [0, 1] and labels ``y``) and a few robustness properties as VNN-LIB.

Training mixes clean cross-entropy with the IBP worst-case cross-entropy of the project's own
engine (Gowal et al. 2018) at a small radius, so that interval bounds can certify some properties
(``certify train --loss ibp`` is the full recipe; this script keeps the shipped example reproducible).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent / "digits"
INPUT_SHAPE = (64,)
N_CLASSES = 10


class DigitsMLP(nn.Module):
    """64 -> hidden -> hidden -> 10, ReLU."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, N_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], -1))


class DigitsCNN(nn.Module):
    """1x8x8 -> conv 3x3 (pad 1) -> conv 3x3 stride 2 (pad 1) -> dense -> 10, ReLU; flat [B, 64] inputs too."""

    def __init__(self, channels: int = 16, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(2 * channels * 16, hidden), nn.ReLU(), nn.Linear(hidden, N_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], 1, 8, 8))


def load_digits_split(seed: int = 0, n_test: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits scaled to [0, 1], split into train and test with a fixed permutation."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def ibp_worst_logits(model: DigitsMLP, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Worst-case logits ``-m`` from the engine's fast-mode IBP margins ``m_j <= f_y - f_j`` over the clipped
    eps-box (``certify.training.bounds``: the module's own parameters, so the loss stays differentiable)."""
    from certify.sets import Box
    from certify.training.bounds import BoundModel, ibp_margins

    graph, _ = BoundModel(model, INPUT_SHAPE)(x)
    box = Box((x - eps).clamp(0, 1), (x + eps).clamp(0, 1))
    return -ibp_margins(graph, box, y)


def train(epochs: int = 300, eps_train: float = 0.03, kappa: float = 0.5, seed: int = 0) -> tuple[DigitsMLP, dict]:
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = load_digits_split(seed)
    xtr_t, ytr_t = torch.tensor(xtr), torch.tensor(ytr)
    model = DigitsMLP()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ce = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        ramp = min(1.0, epoch / (0.5 * epochs))  # eps ramp-up, standard for IBP training
        perm = torch.randperm(len(ytr_t))
        for start in range(0, len(perm), 128):
            idx = perm[start:start + 128]
            xb, yb = xtr_t[idx], ytr_t[idx]
            loss = (1 - kappa * ramp) * ce(model(xb), yb)
            if ramp > 0:
                loss = loss + kappa * ramp * ce(ibp_worst_logits(model, xb, yb, eps_train * ramp), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.tensor(xte)).argmax(1) == torch.tensor(yte)).float().mean())
    return model, {"test_accuracy": acc, "x_test": xte, "y_test": yte}


def export(model: DigitsMLP, info: dict, out: Path = HERE, n_props: int = 6) -> None:
    """Write the ONNX file, the checkpoint, test data and VNN-LIB robustness properties."""
    from certify.spec import Property, robustness
    from certify.vnnlib import write_vnnlib

    out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.zeros(1, 64),), str(out / "digits_mlp.onnx"), dynamo=False,
                      input_names=["input"], output_names=["logits"], opset_version=17)
    torch.save({"state_dict": model.state_dict(), "arch": "certify.examples.digits:DigitsMLP",
                "arch_kwargs": {"hidden": model.net[0].out_features}, "input_shape": list(INPUT_SHAPE),
                "test_accuracy": info["test_accuracy"]}, out / "digits_mlp.pt")
    x, y = info["x_test"][:50], info["y_test"][:50]
    np.savez_compressed(out / "test.npz", x=x, y=y)
    for old in out.glob("*.vnnlib"):
        old.unlink()
    for i in range(n_props):
        eps = (0.02, 0.05, 0.3)[i % 3]
        spec = robustness(torch.tensor(x[i:i + 1], dtype=torch.float64), [int(y[i])], eps, "inf",
                          n_classes=N_CLASSES, clip=(0.0, 1.0))
        name = f"digit{i}_label{int(y[i])}_eps{eps}"
        write_vnnlib(Property(name, (spec,)), out / f"{name}.vnnlib",
                     comment=f"certify bundled example: local robustness of test digit {i} (label {int(y[i])}), "
                             f"L-inf eps={eps} clipped to [0, 1]; unsafe if another class scores >= the label")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--epochs", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, info = train(args.epochs)
    export(model, info, args.out)
    print(f"test accuracy {info['test_accuracy']:.3f}; wrote {args.out}")


if __name__ == "__main__":
    main()
