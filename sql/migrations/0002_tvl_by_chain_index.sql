-- tvl_by_chain reads the latest TVL of every protocol on one chain.
CREATE INDEX tvl_chain_ts_idx ON tvl (chain, ts DESC);
