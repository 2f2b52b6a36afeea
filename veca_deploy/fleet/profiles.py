"""Profiles from many devices, checked against one bundle and grouped into device classes.

A profile (``bench --out FILE`` on a device) identifies what it measured by artifact id *and*
sha256, so it can be matched to a bundle anywhere: entries whose bytes the bundle no longer has
are stale and ignored, and a profile none of whose entries matches was made for another bundle
and is refused. Devices whose ids match (CPU model, usable cores, architecture, GPU, power mode;
see :func:`veca_deploy.runtimes.fingerprint.device_id`) form one class: their profiles merge,
newest measurement first, as a device's own profiles do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..bundle.reader import Bundle
from ..errors import UsageError
from ..selector.profile import Profile, read_profile


@dataclass
class DeviceProfiles:
    """The merged profile of one device class and where it came from."""

    device: str
    profile: Profile
    sources: list[str] = field(default_factory=list)
    matched: int = 0  # entries measured on this bundle's current artifacts
    stale: int = 0  # entries for artifacts the bundle no longer has (other bytes)
    threads: int | None = None

    def summary(self) -> dict:
        fp = self.profile.fingerprint or {}
        cpu = fp.get("cpu") or {}
        gpu = fp.get("gpu") or {}
        return {"device": self.device, "cpu": cpu.get("model"), "usable_cores": cpu.get("usable_cores"),
                "arch": cpu.get("arch"), "isa": cpu.get("isa"), "gpu": gpu.get("gpu_name"),
                "power": (fp.get("power") or {}).get("nvpmodel"), "runtimes": fp.get("runtimes"),
                "threads": self.threads, "profiles": self.sources, "entries": self.matched, "stale": self.stale}


def artifact_hashes(bundle: Bundle) -> dict[str, str]:
    return {a.id: a.sha256 for a in bundle.artifacts}


def match(bundle: Bundle, profile: Profile) -> tuple[int, int]:
    """(entries measured on this bundle's artifacts, entries for other bytes)."""
    have = artifact_hashes(bundle)
    good = sum(1 for e in profile.entries.values() if isinstance(e, dict) and have.get(e.get("artifact")) == e.get("sha256"))
    return good, len(profile.entries) - good


def profile_for(bundle: Bundle, path: str | os.PathLike) -> Profile:
    """Read ``path`` and check it was measured on ``bundle``'s artifacts (one-line errors)."""
    prof = read_profile(path)
    good, _ = match(bundle, prof)
    if not good:
        raise UsageError(f"{path}: profile of device {prof.device} was made for another bundle (none of its "
                         f"{len(prof.entries)} entries matches an artifact of {bundle.root} by sha256)")
    return prof


def threads_of(profile: Profile, bundle: Bundle, threads: int | None = None) -> int | None:
    """The thread count the profile's current entries were measured with (profiles are per
    thread count): ``threads`` when given, else the only one the profile holds."""
    have = artifact_hashes(bundle)
    seen = {e.get("threads") for e in profile.entries.values()
            if isinstance(e, dict) and have.get(e.get("artifact")) == e.get("sha256")}
    if threads is not None:
        if threads not in seen:
            raise UsageError(f"profile of {profile.device} has no measurements with {threads} thread(s) "
                             f"(it has {', '.join(str(t) if t else 'default' for t in sorted(seen, key=str))})")
        return threads
    if len(seen) > 1:
        raise UsageError(f"profile of {profile.device} holds measurements at several thread counts "
                         f"({', '.join(str(t) if t else 'default' for t in sorted(seen, key=str))}); pass --threads")
    return next(iter(seen), None)


def merge(profiles: Iterable[Profile]) -> Profile:
    """One profile from several of the same device class: each entry from its newest measurement."""
    profiles = list(profiles)
    base = max(profiles, key=lambda p: p.updated)
    entries: dict = {}
    pre: dict = {}
    for p in profiles:
        for key, e in p.entries.items():
            if key not in entries or str(e.get("measured", "")) > str(entries[key].get("measured", "")):
                entries[key] = e
        for key, r in p.preprocess.items():  # preprocessing costs of declared input sizes, newest kept
            if key not in pre or str(r.get("measured", "")) > str(pre[key].get("measured", "")):
                pre[key] = r
    return Profile(device=base.device, fingerprint=base.fingerprint, entries=entries,
                   created=min(p.created for p in profiles), updated=base.updated, preprocess=pre)


def device_classes(bundle: Bundle, paths: Iterable[str | os.PathLike], threads: int | None = None) -> list[DeviceProfiles]:
    """The device classes behind ``paths`` (each file checked against ``bundle``), in the order
    their first profile was given. No profile at all is a UsageError."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise UsageError("an empty fleet: give at least one profile file (veca-deploy bench BUNDLE --out FILE on each device)")
    groups: dict[str, list[tuple[Path, Profile]]] = {}
    for p in paths:
        prof = profile_for(bundle, p)
        groups.setdefault(prof.device, []).append((p, prof))
    out = []
    for device, items in groups.items():
        merged = merge([prof for _, prof in items])
        good, stale = match(bundle, merged)
        out.append(DeviceProfiles(device, merged, [str(p) for p, _ in items], good, stale,
                                  threads_of(merged, bundle, threads)))
    return out
