"""Load a model file into a ``Model``: the engine's graph plus a *reference runtime* for replay.

* ONNX: imported with the ``onnx`` package; reference = onnxruntime.
* PyTorch: TorchScript archives, ``torch.export`` archives (``.pt2``), and state dicts with an
  architecture class (``arch="package.module:Class"``); reference = the eager module in its own
  parameter precision (recorded as the graph's ``runtime_dtype``). A module whose trace depends on the
  input's values (data-dependent control flow) is refused: the traced graph would keep one branch.
  PyTorch models are lowered to ONNX in memory (TorchScript exporter, no onnxscript needed) and then
  imported by the same importer, so there is one path into the engine.
* A pickled ``nn.Module`` (``torch.save(model)``) can execute code when loaded; it is refused
  unless ``allow_unsafe_pickle=True`` (CLI: ``--allow-unsafe-pickle``).

The reference is used only to replay counterexamples, never by the engine.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .errors import ModelError, ShapeError
from .graph import Graph
from .onnx_import import load_onnx_model, onnx_to_graph

Reference = Callable[[np.ndarray], np.ndarray]
TORCH_SUFFIXES = (".pt", ".pth", ".pt2", ".ts", ".ckpt")


@dataclass
class Model:
    """A model ready for verification.

    ``graph`` is what the engine bounds; ``reference(x)`` maps a float array ``[B, *input_shape]`` to
    outputs ``[B, n_out]`` (float64) with the model's own runtime; ``sha256`` identifies the file.
    """

    graph: Graph
    reference: Reference
    reference_name: str
    path: str
    kind: str
    sha256: str
    module: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.graph.input_shape

    @property
    def n_inputs(self) -> int:
        return self.graph.n_inputs

    @property
    def n_outputs(self) -> int:
        return self.graph.n_outputs


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    arch_kwargs: dict | None = None,
    input_shape: Sequence[int] | None = None,
    allow_unsafe_pickle: bool = False,
) -> Model:
    """Load an ``.onnx`` file or a PyTorch checkpoint (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a directory, expected a model file")
    digest = sha256_file(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _onnx(path, digest)
    if zipfile.is_zipfile(path):
        return _torch(path, digest, arch, arch_kwargs, input_shape, allow_unsafe_pickle)
    if suffix in TORCH_SUFFIXES:  # torch.save's legacy (non-zip) format
        return _torch_legacy(path, digest, arch, arch_kwargs, input_shape, allow_unsafe_pickle)
    return _onnx(path, digest)


def _onnx(path: Path, digest: str) -> Model:
    model = load_onnx_model(str(path))
    graph = onnx_to_graph(model, str(path))
    return Model(graph, onnx_reference(model.SerializeToString(), graph), "onnxruntime", str(path), "onnx", digest)


def onnx_reference(model_bytes: bytes, graph: Graph) -> Reference:
    """onnxruntime on the original file. Batches when the file's batch axis is symbolic, else one
    call per input (ACAS Xu and MNIST-FC fix the batch to 1)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    meta = session.get_inputs()[0]
    # the input's declared type: a float16 model is fed float16, a double one float64
    dtype = {"tensor(double)": np.float64, "tensor(float16)": np.float16}.get(meta.type, np.float32)
    dims = meta.shape
    batched = bool(dims) and not isinstance(dims[0], int)
    per_item = tuple(graph.meta.get("onnx_input_shape", (1, *graph.input_shape)))
    if graph.meta.get("batch_added"):
        per_item = per_item[1:]

    def run(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=dtype).reshape(-1, *graph.input_shape)
        if batched:
            out = session.run(None, {meta.name: x.reshape(-1, *per_item[1:])})[0]
            return np.asarray(out, dtype=np.float64).reshape(x.shape[0], -1)
        outs = [session.run(None, {meta.name: xi.reshape(per_item)})[0] for xi in x]
        return np.asarray(outs, dtype=np.float64).reshape(x.shape[0], -1)

    return run


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    """The precision the eager module computes in: its first floating parameter's (or buffer's) dtype,
    float32 when it has none."""
    try:
        tensors = list(module.parameters()) + list(module.buffers())
    except Exception:  # a module without the usual accessors
        tensors = []
    for t in tensors:
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def module_reference(module: torch.nn.Module, input_shape: Sequence[int], batched: bool = True,
                     dtype: torch.dtype = torch.float32) -> Reference:
    """The eager PyTorch module fed ``dtype`` (its parameter precision), no gradients; one call per input
    when not ``batched`` (``torch.export`` programs are specialised to the batch size they were exported with)."""

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            t = torch.as_tensor(np.asarray(x, dtype=np.float64)).to(dtype).reshape(-1, *input_shape)
            if batched:
                return module(t).reshape(t.shape[0], -1).double().numpy()
            return torch.cat([module(t[i:i + 1]).reshape(1, -1) for i in range(t.shape[0])]).double().numpy()

    return run


class _NoTrain(torch.nn.Module):
    """Wraps a module whose ``train()`` raises (``torch.export`` modules) for the ONNX exporter."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)

    def train(self, mode: bool = True):
        return self


def from_module(module: torch.nn.Module, input_shape: Sequence[int], *, path: str = "<module>",
                kind: str = "module", digest: str = "") -> Model:
    """A ``Model`` from an in-memory PyTorch module with inputs of shape ``[B, *input_shape]``."""
    input_shape = tuple(int(s) for s in input_shape)
    if isinstance(module, torch.nn.Module):  # TorchScript too: the graph is exported in eval mode
        try:
            module.eval()
        except NotImplementedError:
            pass
    buf = io.BytesIO()
    dtype = module_dtype(module)
    dummy = torch.zeros(1, *input_shape, dtype=dtype)
    scripted = isinstance(module, torch.jit.ScriptModule)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the tracer warns when the trace depends on the values it saw (a Python bool or int taken
            # from a tensor, e.g. ``if x.sum() > 0``): the exported graph would keep one branch only
            warnings.simplefilter("error", torch.jit.TracerWarning)
            if kind == "torch.export":  # its shape guards (torch._assert on sizes) are not branches: data-
                # dependent control flow cannot pass torch.export (it would be an explicit torch.cond)
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch$")
            torch.onnx.export(module if scripted else _NoTrain(module), (dummy,), buf, dynamo=False, input_names=["input"],
                              output_names=["output"], opset_version=17)
    except Exception as exc:
        tracer = _tracer_warning(exc)  # raised inside C code, it may arrive wrapped in a SystemError
        if tracer is not None:
            first = str(tracer).strip().splitlines()[0][:160] if str(tracer).strip() else "TracerWarning"
            raise ModelError(f"{path}: data-dependent control flow in {_class_name(module)}.forward: the traced "
                             f"graph would keep one branch ({first})") from None
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: could not lower the PyTorch model to a graph with input shape "
                         f"{input_shape}: {msg}") from None
    graph = onnx_to_graph(load_onnx_model(buf.getvalue()), path)
    # the engine covers the eager module's precision (its parameters'), whatever the exporter declared
    graph = dataclasses.replace(graph, meta={**graph.meta, "runtime_dtype": str(dtype).removeprefix("torch.")})
    reference = module_reference(module, input_shape, batched=kind != "torch.export", dtype=dtype)
    return Model(graph, reference, "torch eager", path, kind, digest, module)


def _tracer_warning(exc: BaseException | None) -> BaseException | None:
    """The ``TracerWarning`` in ``exc``'s chain of causes, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, torch.jit.TracerWarning):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _class_name(module: torch.nn.Module) -> str:
    inner = module.inner if isinstance(module, _NoTrain) else module
    name = getattr(inner, "original_name", None) if isinstance(inner, torch.jit.ScriptModule) else None
    return name or type(inner).__name__


def _import_arch(arch: str, kwargs: dict | None) -> torch.nn.Module:
    if ":" not in arch:
        raise ModelError(f"--arch must look like 'package.module:Class', got {arch!r}")
    mod_name, cls_name = arch.split(":", 1)
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot import architecture {arch!r}: {exc}") from None
    try:
        return cls(**(kwargs or {}))
    except Exception as exc:  # e.g. saved arch_kwargs the class does not take
        raise ModelError(f"cannot build architecture {arch!r} with arguments {kwargs or {}}: "
                         f"{type(exc).__name__}: {exc}") from None


def _first_layer_shape(module: torch.nn.Module) -> tuple[int, ...] | None:
    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            return (m.in_features,)
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            return None
    return None


def _need_shape(path: Path, shape) -> tuple[int, ...]:
    if shape is None:
        raise ModelError(f"{path}: cannot tell the model's input shape; pass --input-shape (e.g. 1,28,28)")
    return tuple(int(s) for s in shape)


def _torch(path, digest, arch, arch_kwargs, input_shape, allow_unsafe_pickle) -> Model:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names):
        module = torch.jit.load(str(path), map_location="cpu")
        return from_module(module, _need_shape(path, input_shape), path=str(path), kind="torchscript", digest=digest)
    if any("serialized_exported_program" in n or n.endswith("archive_format") for n in names):
        ep = torch.export.load(str(path))
        if input_shape is None:
            user = set(ep.graph_signature.user_inputs)
            vals = [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]
            if len(vals) != 1 or vals[0] is None:
                raise ModelError(f"{path}: expected one tensor input in the exported program, found {len(vals)}")
            input_shape = tuple(int(s) for s in vals[0].shape[1:])
        return from_module(ep.module(), input_shape, path=str(path), kind="torch.export", digest=digest)
    return _torch_legacy(path, digest, arch, arch_kwargs, input_shape, allow_unsafe_pickle)


def _torch_legacy(path, digest, arch, arch_kwargs, input_shape, allow_unsafe_pickle) -> Model:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        if not allow_unsafe_pickle:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            first = re.sub(r"\x1b\[[0-9;]*m", "", first)  # torch's message carries terminal escape codes
            raise ModelError(
                f"{path}: not a state dict, TorchScript or torch.export archive (safe load failed: {first[:200]}). "
                "If it is a pickled nn.Module you trust, re-run with --allow-unsafe-pickle: "
                "loading a pickle executes code from the file.") from None
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    if isinstance(obj, torch.nn.Module):
        shape = input_shape or _first_layer_shape(obj)
        return from_module(obj, _need_shape(path, shape), path=str(path), kind="pickle", digest=digest)
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: expected a state dict, got {type(obj).__name__}")
    meta: dict[str, Any] = {}
    state = obj
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        state = obj["state_dict"]
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
    saved_arch = meta.get("arch")
    if arch is None and isinstance(saved_arch, str) and saved_arch.startswith("certify."):
        arch = saved_arch  # only our own bundled architectures are imported without being asked
    if arch is None:
        raise ModelError(f"{path}: a state dict needs its architecture: pass --arch package.module:Class")
    try:
        module = _import_arch(arch, arch_kwargs if arch_kwargs is not None else meta.get("arch_kwargs"))
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:  # line 0 is only "Error(s) in loading state_dict for X:", the facts follow
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = " ".join(lines[1:] or lines)
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise ModelError(f"{path}: state dict does not fit {arch}: {detail}") from None
    shape = input_shape or meta.get("input_shape") or _first_layer_shape(module)
    return from_module(module, _need_shape(path, shape), path=str(path), kind="state_dict", digest=digest)


def check_spec_fits(model: Model, n_inputs: int, n_outputs: int, source: str) -> None:
    """``ShapeError`` naming both numbers when a property does not fit the model."""
    name = Path(model.path).name
    if n_inputs != model.n_inputs:
        raise ShapeError(f"{source}: number of inputs does not match model {name} (input shape "
                         f"{list(model.input_shape)})", f"{model.n_inputs} (model)", f"{n_inputs} (property)")
    if n_outputs != model.n_outputs:
        raise ShapeError(f"{source}: number of outputs does not match model {name}",
                         f"{model.n_outputs} (model)", f"{n_outputs} (property)")
