"""Training classifiers, plain or with certified losses, through the engine's own differentiable bounds.

``train(module, x, y, input_shape, TrainOptions(loss="ibp", eps=0.1))`` trains in place with one of
``LOSSES`` (ce, noise, pgd, ibp, crown-ibp, sabr, cc-ibp, mtl-ibp; see ``losses``) and the recipe of Shi
et al. 2021 for the certified ones (``schedule``, ``regularisers``); ``evaluate`` reports clean, PGD and
certified accuracy with the sound backends; ``arch`` holds the built-in networks; checkpoints are
self-describing (``checkpoint``).
"""
from .checkpoint import export_onnx, load_checkpoint, save_checkpoint
from .loop import EpochStats, EvalSet, evaluate, train
from .losses import CERTIFIED, LOSSES
from .options import TrainOptions

__all__ = ["CERTIFIED", "LOSSES", "EpochStats", "EvalSet", "TrainOptions", "evaluate", "export_onnx",
           "load_checkpoint", "save_checkpoint", "train", "accuracy"]


def accuracy(module, x, y, input_shape, noise_sigma: float = 0.0, seed: int = 0) -> float:
    """Top-1 accuracy of ``module`` on ``x`` (plus one Gaussian draw of ``noise_sigma`` per example)."""
    import torch

    module.eval()
    with torch.no_grad():
        xt = torch.as_tensor(x, dtype=torch.float32).reshape(-1, *input_shape)
        if noise_sigma > 0:
            xt = xt + noise_sigma * torch.randn(xt.shape, generator=torch.Generator().manual_seed(seed))
        return float((module(xt).argmax(1) == torch.as_tensor(y)).float().mean())
