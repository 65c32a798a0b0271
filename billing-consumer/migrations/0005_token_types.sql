-- The token types a usage event carries beside prompt, completion and cached prompt tokens: reasoning tokens (of
-- the completion) and prompt-cache writes by lifetime (of the prompt; Anthropic charges a 5-minute and a 1-hour
-- write differently). NULL where the event did not say — every event written before the gateway reported them,
-- and providers that report none — so that NULL never reads as a measured zero.
--
-- ADD COLUMN only changes metadata: existing parts read the default (NULL) without being rewritten. Applying it
-- twice is refused by the migrations table, and a column that exists already is skipped (see migrations.rs).
ALTER TABLE usage_events ADD COLUMN reasoning_tokens Nullable(UInt32);
ALTER TABLE usage_events ADD COLUMN cache_write_5m_tokens Nullable(UInt32);
ALTER TABLE usage_events ADD COLUMN cache_write_1h_tokens Nullable(UInt32);
