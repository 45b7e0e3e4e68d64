"""``gateway explain`` (issue #19 §1): the gateway's own decision on a captured request, step by
step, in integrator terms. See ``core`` for how it reuses the live code, ``capture`` for inputs."""

from __future__ import annotations

from .capture import Captured, CaptureError, parse_capture
from .core import Explanation, Step, explain
from .render import EXIT_CODES, to_json, to_text

__all__ = ("EXIT_CODES", "CaptureError", "Captured", "Explanation", "Step", "explain", "parse_capture",
           "to_json", "to_text")
