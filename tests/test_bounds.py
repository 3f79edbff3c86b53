"""constraints/lowest.txt pins exactly the lower bounds that pyproject.toml declares."""

from importlib.metadata import requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LOWEST = Path(__file__).resolve().parents[1] / "constraints" / "lowest.txt"


def test_lowest_constraints_pin_every_declared_lower_bound():
    pins = {}
    for line in LOWEST.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    bounds = {}
    for text in requires("lit-dlrm"):
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": "test"}):
            lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
            bounds[canonicalize_name(req.name)] = lower[0] if lower else None
    differ = sorted(set(pins.items()) ^ set(bounds.items()), key=str)
    assert pins == bounds, f"{LOWEST} and pyproject.toml disagree on: {differ}"
