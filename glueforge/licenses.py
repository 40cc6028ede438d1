"""The licences of a bundle's weights: recorded in its manifest, shown by its report and by `glueforge pull`, and
checked before it is published.

Each weight in models.yaml names its licence (SPDX id), whether it allows commercial use, and where upstream says
so. A bundle built on a weight that forbids commercial use (Magic Leap's SuperPoint, and so superpoint_lightglue) is
published only where the configuration acknowledges that weight by name (``store.acknowledge_noncommercial``).
Standard library only: pull reads it.
"""

from __future__ import annotations

from typing import Any, Mapping

from glueforge import GlueforgeError

UNDECLARED = "undeclared"


class LicenseRefused(GlueforgeError):
    """A bundle whose weights' licence forbids what is asked (publishing for commercial use)."""


def licenses(provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's ``licenses``: per weight name its licence (or ``undeclared``), and whether every weight allows
    commercial use (``commercial``: True, False, or None where one is undeclared)."""
    weights = {w["name"]: w.get("license") or UNDECLARED for w in (provenance.get("weights") or {}).values()}
    known = [lic["commercial"] for lic in weights.values() if lic != UNDECLARED]
    commercial = False if not all(known) else (None if len(known) < len(weights) else True)
    return {"weights": weights, "commercial": commercial}


def summary(manifest: Mapping[str, Any]) -> str:
    """One line: each weight's licence, and what that means for commercial use."""
    record = manifest.get("licenses") or licenses(manifest.get("provenance") or {})
    parts = [f"{name}: {lic['spdx'] if lic != UNDECLARED else UNDECLARED}" for name, lic in record["weights"].items()]
    use = {True: "commercial use allowed", False: "NOT for commercial use", None: "commercial use not established"}
    return f"licences: {', '.join(parts) or 'no weights'} ({use[record['commercial']]})"


def check_publishable(manifest: Mapping[str, Any] | None, acknowledged: list[str], where: str) -> None:
    """Refuse to publish a bundle built on a non-commercial weight the configuration does not acknowledge."""
    if manifest is None:
        return
    record = manifest.get("licenses") or licenses(manifest.get("provenance") or {})
    refused = [name for name, lic in record["weights"].items()
               if lic != UNDECLARED and not lic["commercial"] and name not in acknowledged]
    if refused:
        terms = "; ".join(f"{n}: {record['weights'][n]['spdx']} ({record['weights'][n]['source']})" for n in refused)
        raise LicenseRefused(
            f"{manifest['model']} {manifest['version']} for {manifest['target']} is built on weights whose licence "
            f"forbids commercial use ({terms}); to publish it anyway (research), name them in "
            f"store.acknowledge_noncommercial of {where}")
