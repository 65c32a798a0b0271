-- The team and organisation of each event's consumer, as the gateway stamped them when the request was made
-- (`[[teams]]`): moving a consumer to another team later never rewrites its history. '' where the consumer had no
-- team, and in every event written before teams existed. Invoices per team and per organisation are sums over
-- these columns, so they add up exactly to the invoices of the consumers they grouped.
--
-- ADD COLUMN only changes metadata: existing parts read the default without being rewritten.
ALTER TABLE usage_events ADD COLUMN team String DEFAULT '';
ALTER TABLE usage_events ADD COLUMN organization String DEFAULT '';
