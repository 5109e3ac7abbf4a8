"""Cache hit rate during a load, from Redis's own counters.

``INFO stats`` ``keyspace_hits`` / ``keyspace_misses`` are what ElastiCache
publishes as CacheHits / CacheMisses, so the sandbox and production gate on the
same thing. The service's own counters (``llama:stats:cache_hits`` /
``cache_misses``, see the service contract) are read alongside: they count
only the query cache, and their miss delta bounds how many database reads
the load caused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SERVICE_HITS_KEY = "llama:stats:cache_hits"
SERVICE_MISSES_KEY = "llama:stats:cache_misses"


@dataclass(frozen=True)
class CacheCounters:
    keyspace_hits: int
    keyspace_misses: int
    #: None when the service does not keep the counters (then only Redis INFO is known).
    service_hits: int | None
    service_misses: int | None

    @classmethod
    def read(cls, client: Any) -> CacheCounters:
        stats = client.info("stats")
        hits, misses = client.mget(SERVICE_HITS_KEY, SERVICE_MISSES_KEY)
        return cls(int(stats.get("keyspace_hits", 0)), int(stats.get("keyspace_misses", 0)),
                   None if hits is None else int(hits), None if misses is None else int(misses))


def _ratio(hits: int, misses: int) -> float | None:
    return hits / (hits + misses) if hits + misses > 0 else None


@dataclass(frozen=True)
class CacheDelta:
    hits: int
    misses: int
    service_hits: int | None
    service_misses: int | None

    @classmethod
    def between(cls, before: CacheCounters, after: CacheCounters) -> CacheDelta:
        def diff(a: int | None, b: int | None) -> int | None:
            # A counter reset (DELETE /_sandbox/cache, FLUSHALL) mid-load: count from zero.
            if a is None or b is None:
                return None
            return b - a if b >= a else b

        return cls(max(0, after.keyspace_hits - before.keyspace_hits),
                   max(0, after.keyspace_misses - before.keyspace_misses),
                   diff(before.service_hits, after.service_hits),
                   diff(before.service_misses, after.service_misses))

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float | None:
        return _ratio(self.hits, self.misses)

    @property
    def service_hit_rate(self) -> float | None:
        if self.service_hits is None or self.service_misses is None:
            return None
        return _ratio(self.service_hits, self.service_misses)

    def summary(self) -> dict[str, Any]:
        return {"keyspace_hits": self.hits, "keyspace_misses": self.misses, "hit_rate": self.hit_rate,
                "service_hits": self.service_hits, "service_misses": self.service_misses,
                "service_hit_rate": self.service_hit_rate}
