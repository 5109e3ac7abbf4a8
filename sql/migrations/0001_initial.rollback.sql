-- Statements run in this order on rollback.
DROP TABLE tvl;
DROP TABLE protocols;
