"""certify: sound verification of neural networks.

The names most users need, re-exported explicitly; everything else lives in its module.
"""
from .api import verify
from .models import Model, load_model
from .results import Counterexample, Guarantee, Result, Verdict
from .sets import Box, LpBall
from .spec import Clause, Property, Spec, robustness, targeted
from .vnnlib import read_vnnlib, write_vnnlib

__all__ = [
    "Box", "Clause", "Counterexample", "Guarantee", "LpBall", "Model", "Property", "Result", "Spec",
    "Verdict", "load_model", "read_vnnlib", "robustness", "targeted", "verify", "write_vnnlib",
]
