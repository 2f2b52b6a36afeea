"""The tier selector and the runtime edge applications embed: candidates from the manifest,
latencies from this device's profile (measured with the shared timing harness), the most
accurate candidate that fits a budget, and :class:`Runtime` that serves it (optionally adaptive)."""

from .adaptive import AdaptiveController
from .candidates import Candidate, Tier, candidates, resolve_backends
from .profile import Profile, load_profile, measure_candidates, profile_path, save_profile
from .runtime import Prediction, Runtime
from .select import Selection, select

__all__ = ["AdaptiveController", "Candidate", "Prediction", "Profile", "Runtime", "Selection", "Tier", "candidates",
           "load_profile", "measure_candidates", "profile_path", "resolve_backends", "save_profile", "select"]
