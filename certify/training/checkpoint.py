"""Self-describing checkpoints: the state dict with the architecture (``arch``, ``arch_kwargs``), the input
shape, the training options and the per-epoch history, which ``certify.models.load_model`` reads without
``--arch`` (for architectures under ``certify.``), and ``certify train --resume`` continues from."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .options import TrainOptions


def save_checkpoint(module: nn.Module, path: str | Path, arch: str, arch_kwargs: dict[str, Any],
                    input_shape: tuple[int, ...], options: TrainOptions, extra: dict[str, Any] | None = None,
                    resume: dict[str, Any] | None = None) -> None:
    """Write the checkpoint; ``resume`` (optimiser state, epoch, generator state) makes it resumable."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    opts = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()}
    obj = {"state_dict": state, "arch": arch, "arch_kwargs": dict(arch_kwargs), "input_shape": list(input_shape),
           "training": {**opts, **(extra or {})}}
    if resume is not None:
        obj["resume"] = resume
    tmp = Path(str(path) + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)  # an interrupted save never leaves a truncated checkpoint


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    return torch.load(str(path), map_location="cpu", weights_only=True)


def export_onnx(module: nn.Module, path: str | Path, input_shape: tuple[int, ...]) -> None:
    module.eval().cpu()
    torch.onnx.export(module, (torch.zeros(1, *input_shape),), str(path), dynamo=False,
                      input_names=["input"], output_names=["logits"], opset_version=17)
