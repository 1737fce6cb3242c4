"""Per-stage latency from the services' own histograms: received → detected → sent → stored →
published.

The gateway and the collector each keep `roadwatch_{service}_stage_seconds{stage=…}`
(adapters/metrics.py). A benchmark reads them before and after a measurement and prints the
p50 and p99 of what happened in between, estimated within each histogram bucket by linear
interpolation (so a figure is as precise as the buckets around it).
"""

from __future__ import annotations

import math
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# The stages in pipeline order, with the service that measures each and what it spans.
STAGES = (
    ("gateway", "received", "vehicle clock → gateway took the message"),
    ("gateway", "detected", "validation, detection and journal"),
    ("gateway", "sent", "detected → acknowledged by Prosody"),
    ("collector", "stored", "collector got it → batch committed in MySQL"),
    ("collector", "published", "committed → PubSub publish acknowledged"),
)

Buckets = dict[float, float]  # upper bound → cumulative count


@dataclass
class StageHistograms:
    """Cumulative bucket counts per (service, stage) at one moment."""

    counts: dict[tuple[str, str], Buckets]

    @classmethod
    def read(cls, ports: dict[str, int]) -> StageHistograms:
        """Read every service's /metrics (ports by service name; 0 or unreachable: none)."""
        counts: dict[tuple[str, str], Buckets] = {}
        for service, port in ports.items():
            if not port:
                continue
            try:
                url = f"http://127.0.0.1:{port}/metrics"
                with urllib.request.urlopen(url, timeout=5) as answer:
                    text = answer.read().decode()
            except OSError:
                continue
            name = f"roadwatch_{service}_stage_seconds"
            for family in text_string_to_metric_families(text):
                if family.name != name:
                    continue
                for sample in family.samples:
                    if sample.name == f"{name}_bucket":
                        key = (service, sample.labels["stage"])
                        bound = float(sample.labels["le"])
                        counts.setdefault(key, {})[bound] = sample.value
        return cls(counts)


def quantile(buckets: Buckets, share: float) -> float | None:
    """Estimate a quantile from cumulative buckets; None without observations."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = share * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: say its bound
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def delta(before: StageHistograms, after: StageHistograms) -> dict[tuple[str, str], Buckets]:
    out: dict[tuple[str, str], Buckets] = {}
    for key, buckets in after.counts.items():
        old = before.counts.get(key, {})
        out[key] = {bound: count - old.get(bound, 0.0) for bound, count in buckets.items()}
    return out


def report(before: StageHistograms, after: StageHistograms) -> list[str]:
    """Lines of a table: each stage's count, p50 and p99 between the two readings."""
    changes = delta(before, after)
    lines = ["  stage      n        p50        p99  (what it spans)"]
    for service, stage, span in STAGES:
        buckets = changes.get((service, stage), {})
        total = buckets.get(math.inf, 0.0)
        p50, p99 = quantile(buckets, 0.5), quantile(buckets, 0.99)
        lines.append(
            f"  {stage:<10} {total:>6.0f} {_ms(p50):>10} {_ms(p99):>10}  ({service}: {span})"
        )
    return lines


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.0f} s"
