-- llamadeploy: baseline
-- The schema as it stood before migrations were managed (production's, and the
-- sandbox service's schema.sql). Where these tables already exist with these
-- columns, the migrate stage adopts this file (records it as applied, never runs
-- it, never rolls it back); on an empty database it runs.
-- Protocols and their TVL per chain over time: the tables the On-Chain service reads.
CREATE TABLE protocols (
    id serial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    chain text NOT NULL,
    category text
);

CREATE TABLE tvl (
    protocol_id integer NOT NULL REFERENCES protocols (id),
    chain text NOT NULL,
    ts timestamptz NOT NULL,
    tvl_usd numeric(38, 2) NOT NULL,
    PRIMARY KEY (protocol_id, chain, ts)
);
