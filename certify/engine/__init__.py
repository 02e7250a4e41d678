"""The bound-propagation engine: a rule table, one traversal, and transforms composed over them."""
from .fp import FAST, SOUND, Rounding, certify_margin
from .ibp import interval_bounds, sound_interval_bounds

__all__ = ["FAST", "SOUND", "Rounding", "certify_margin", "interval_bounds", "sound_interval_bounds"]
