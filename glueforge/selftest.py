"""``glueforge infer BUNDLE --self-test``: run the bundle's sample and compare with what it recorded.

Every bundle validated by glueforge carries ``sample.npz``: its validation pair (the images as a
caller passes them, uint8) and what the runtime API returned on them when the bundle was built,
through the runner validation used. The self-test runs the same API calls on this machine and
checks the agreement against the thresholds the bundle was validated with (``manifest.json``
``glueforge.validation.thresholds``): keypoints with a mutual nearest neighbour within 1 px, descriptor
cosine, and the share of the recorded matches reproduced, and of the produced matches recorded. A bundle
whose manifest states its matcher's depth also recorded the layers its matcher ran: the table shows both counts,
unjudged (at adaptive depth a borderline exit may stop one layer apart on another machine; the match checks judge
the result).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from glueforge.agreement import descriptor_cosine, keypoint_mnn_rate, match_recall, mutual_nearest
from glueforge.api import Bundle, BundleError

SAMPLE = "sample.npz"


@dataclass
class SelfTest:
    bundle: str
    checks: list[tuple[str, float, float]] = field(default_factory=list)  # (what, value, threshold)
    notes: list[str] = field(default_factory=list)  # facts shown with the checks, not judged

    @property
    def passed(self) -> bool:
        return all(value >= threshold for _, value, threshold in self.checks)

    def table(self) -> str:
        width = max(len(c[0]) for c in self.checks)
        lines = [f"self-test of {self.bundle} on its sample (recorded at build) against the bundle's thresholds"]
        lines += [f"  {what:{width}s}  {value:.4f}  >= {threshold:<6g} {'ok' if value >= threshold else 'FAILED'}"
                  for what, value, threshold in self.checks]
        lines += [f"  {note}" for note in self.notes]
        lines.append("passed" if self.passed else "FAILED")
        return "\n".join(lines)


def load_sample(bundle: Bundle) -> dict[str, np.ndarray]:
    path = bundle.directory / SAMPLE
    if not path.is_file():
        raise BundleError(f"{bundle}: no {SAMPLE}: this bundle was not validated (or predates samples); "
                          "nothing to self-test against")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def self_test(bundle: Bundle) -> SelfTest:
    sample = load_sample(bundle)
    t = bundle.manifest["validation"]["thresholds"]
    result = SelfTest(str(bundle))
    images = [sample[k] for k in ("image0", "image1") if k in sample]
    if "matches" in sample:
        pair = bundle.match_pair(images[0], images[1])
        produced = [pair.features0, pair.features1]
    else:
        produced = bundle.extract(images)
    corr = []
    for i, features in enumerate(produced):
        corr.append(mutual_nearest(sample[f"keypoints{i}"], features.keypoints))
        result.checks.append((f"image {i}: recorded keypoints found again (1 px)", keypoint_mnn_rate(corr[i]), t["keypoint_mnn"]))
        back = mutual_nearest(features.keypoints, sample[f"keypoints{i}"])
        result.checks.append((f"image {i}: produced keypoints recorded (1 px)", keypoint_mnn_rate(back), t["keypoint_mnn"]))
        if f"descriptors{i}" in sample and features.descriptors is not None:
            cos = descriptor_cosine(sample[f"descriptors{i}"], features.descriptors, corr[i])
            result.checks.append((f"image {i}: mean descriptor cosine", float(cos.mean()) if len(cos) else 1.0,
                                  t["descriptor_cosine"]))
    if "matches" in sample:
        expected, got = sample["matches"], pair.matches
        result.checks.append(("recorded matches reproduced", match_recall(expected, got, corr[0], corr[1]), t["match_recall"]))
        inverse = [mutual_nearest(f.keypoints, sample[f"keypoints{i}"]) for i, f in enumerate(produced)]
        result.checks.append(("produced matches recorded", match_recall(got, expected, inverse[0], inverse[1]), t["match_recall"]))
        if "layers" in sample:
            result.notes.append(f"matcher layers run: {pair.layers} (recorded: {int(sample['layers'])})")
    return result
