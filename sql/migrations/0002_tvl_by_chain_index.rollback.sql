DROP INDEX tvl_chain_ts_idx;
