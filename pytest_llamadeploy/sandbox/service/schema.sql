-- Schema and seed of the reference On-Chain service. Idempotent: every
-- release runs it at start (under an advisory lock), so it only creates what
-- is missing and the seed is the same deterministic data on every run.

-- protocols and tvl have the shapes of sql/migrations/0001_initial.sql (the
-- real service's schema); indexes the migrations add are left to them.
CREATE TABLE IF NOT EXISTS protocols (
    id        serial PRIMARY KEY,
    name      text NOT NULL UNIQUE,
    chain     text NOT NULL,
    category  text
);

CREATE TABLE IF NOT EXISTS tvl (
    protocol_id integer NOT NULL REFERENCES protocols (id),
    chain       text NOT NULL,
    ts          timestamptz NOT NULL,
    tvl_usd     numeric(38, 2) NOT NULL,
    PRIMARY KEY (protocol_id, chain, ts)
);

CREATE TABLE IF NOT EXISTS alert_rules (
    id          bigserial PRIMARY KEY,
    chain       text NOT NULL,
    above       double precision NOT NULL,
    owner       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS alert_rules_chain_idx ON alert_rules (chain, above);

CREATE TABLE IF NOT EXISTS alerts (
    id        text PRIMARY KEY,
    rule_id   bigint NOT NULL REFERENCES alert_rules (id),
    event_id  text NOT NULL,
    above     double precision NOT NULL,
    tvl       double precision NOT NULL,
    previous  double precision NOT NULL,
    ts        timestamptz NOT NULL DEFAULT now(),
    -- Exactly once per (rule, event) even if two processes evaluated the same event.
    UNIQUE (rule_id, event_id)
);

-- 200 protocols over 10 chains (20 each), 30 days of TVL ending 2024-01-30.
-- Arithmetic instead of random() so every run seeds the same numbers.
INSERT INTO protocols (id, name, chain, category)
SELECT i,
       'Protocol ' || lpad(i::text, 3, '0'),
       (ARRAY['Ethereum', 'Arbitrum', 'Optimism', 'Polygon', 'BSC',
              'Avalanche', 'Solana', 'Base', 'Fantom', 'Tron'])[1 + (i * 7) % 10],
       (ARRAY['Dexes', 'Lending', 'CDP', 'Yield', 'Bridge', 'Liquid Staking', 'Derivatives'])[1 + (i * 3) % 7]
FROM generate_series(1, 200) AS i
ON CONFLICT DO NOTHING;

INSERT INTO tvl (protocol_id, chain, ts, tvl_usd)
SELECT p.id,
       p.chain,
       timestamptz '2024-01-01 00:00:00+00' + d * interval '1 day',
       round((10000 + (p.id * 7919) % 1000003) * 100 * (1 + 0.1 * sin(p.id + d))::numeric, 2)
FROM protocols p, generate_series(0, 29) AS d
WHERE p.id <= 200
ON CONFLICT DO NOTHING;
