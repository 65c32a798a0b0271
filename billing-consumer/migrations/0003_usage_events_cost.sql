-- usage_events gains the price of each event: cost_micros (micro-units of `currency`, signed so that later
-- adjustments fit the same column; never negative today), currency (ISO 4217, '' when unpriced) and
-- price_version (`model@effective_from` of the price table version that priced it, '' when no price was in
-- force). billing-consumer computes them while ingesting (billing-consumer/src/pricing.rs); rows written before
-- this migration, or by a consumer started without --prices, hold 0 / '' / '' and show as unpriced on invoices
-- until the month is rebuilt (`billing-consumer rebuild`) with prices.
--
-- Exactly-once, on ClickHouse 18.16 and on current ClickHouse alike. Kafka delivers at least once: a crash or a
-- failed commit between the INSERT and the offset commit, or a rebalance, redelivers a batch that is already in
-- the table. Neither server deduplicates that INSERT: 18.16 has no insert deduplication for non-replicated
-- tables, current ClickHouse has it only for replicated tables or with non_replicated_deduplication_window set,
-- and even then only for a block identical to one inserted before (or with the same insert_deduplication_token)
-- — a redelivered batch is cut differently. So the table does it:
-- it is a ReplacingMergeTree whose sorting key (consumer_id, event_time, event_id) is the same for every
-- delivery of one event, and whose partition key (toYYYYMM(event_time)) derives from that key, so copies always
-- meet in the same partition. Merges collapse them eventually; every read that bills uses FINAL (invoices,
-- audit, usage reports), which collapses them at read time, so each event counts once whatever the merges did.
--
-- The cost is computed from the event alone (model_requested, finished_at_ms, tokens) and the price table, so
-- every delivery of an event carries the same cost as long as the prices do. When a consumer restarts with a
-- changed price table and an event is redelivered, FINAL keeps the last inserted copy; re-pricing a period is
-- therefore done by `rebuild` into a fresh table, not by changing prices under a running ledger.
--
-- ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS; the migration runner skips an ADD COLUMN whose column
-- exists already (system.columns), so a migration interrupted half-way, or run by two consumers at once, is
-- harmless. One column per statement.
ALTER TABLE usage_events ADD COLUMN cost_micros Int64 DEFAULT 0;
ALTER TABLE usage_events ADD COLUMN currency String DEFAULT '';
ALTER TABLE usage_events ADD COLUMN price_version String DEFAULT '';
