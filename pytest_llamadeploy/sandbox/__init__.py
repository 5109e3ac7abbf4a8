"""The sandbox: a rehearsal of the production system on loopback (moto, PostgreSQL,
Redis, the reference On-Chain service, a front door playing API Gateway + alias routing)."""
