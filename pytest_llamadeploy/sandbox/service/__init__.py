"""The reference On-Chain service of the sandbox (contract: docs/service-contract.md).

Only the light modules are re-exported; the ASGI app (starlette, psycopg,
redis) is imported by ``__main__`` and by whoever needs it explicitly.
"""

from .faults import KNOBS, parse_faults, validate_faults

__all__ = ["KNOBS", "parse_faults", "validate_faults"]
