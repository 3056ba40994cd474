"""An attacker's suite: every case runs against a real uvicorn server on 127.0.0.1 with auth on.

`secured(**overrides)` starts the service on the scratch PostgreSQL database with 2,000 demo orders, a file root `r`
(a.txt and a sparse big.bin) and an upstream `up` (a real file server on loopback); no key exists until a test
creates one with tests.helpers.create_key."""

from __future__ import annotations

from tests.access.test_auth import audit, secured, upstream  # noqa: F401 (fixtures and a helper shared here)
