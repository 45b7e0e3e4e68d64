"""Text for a person and JSON for tools, from one ``Explanation``."""

from __future__ import annotations

import json
import time

from .core import Explanation

__all__ = ("EXIT_CODES", "to_json", "to_text")

# allow / answered: 0; refused: 1; would refuse (report-only route, forwarded): 4; undetermined: 3.
EXIT_CODES = {"allow": 0, "answered": 0, "refuse": 1, "undetermined": 3, "would_refuse": 4}

_MARK = {"pass": "PASS", "fail": "FAIL", "skip": "skip", "undetermined": "????", "info": "info"}


def to_json(exp: Explanation) -> str:
    return json.dumps(exp.to_json(), indent=2, sort_keys=False)


def to_text(exp: Explanation) -> str:
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp.at))
    out = [f"{exp.request}  at {at}{'' if exp.at_given else ' (now)'}"]
    for step in exp.steps:
        out.append(f"  [{_MARK.get(step.status, step.status)}] {step.name:<12} {step.summary}")
        width = max((len(w) for w, _, _ in step.facts), default=0)
        for what, value, check in step.facts:
            out.append(f"         {what:<{width}}  {value}" + (f"   <- {check}" if check == "MISMATCH" else ""))
    out.append("")
    if exp.verdict == "undetermined":
        out.append("answer: UNDETERMINED offline (see the ???? step)")
    elif exp.verdict == "allow":
        out.append("answer: ALLOWED, forwarded to the upstream (whose response the client gets)")
    elif exp.verdict == "would_refuse":
        out.append(f"answer: REPORT-ONLY route: forwarded although refused ({exp.reason})")
    elif exp.verdict == "answered":
        out.append(f"answer: {exp.status}, answered by the gateway itself")
    else:
        out.append(f"answer: {exp.status} (reason {exp.reason})")
    for name, value in exp.headers.items():
        out.append(f"  {name}: {value}")
    if exp.body:
        out.append(f"  body: {json.dumps(exp.body)}")
    if exp.enforced is not None:
        out.append(f"with enforcement on, the answer would be {exp.enforced['status']}:")
        for name, value in exp.enforced["headers"].items():
            out.append(f"  {name}: {value}")
    return "\n".join(out)
