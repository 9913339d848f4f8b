-- The vendor's cost beside the tenant's price, on every usage row and in the daily roll-up.
-- Rows recorded before this migration were priced at the vendor's price (there was no markup), so their
-- cost is their amount.
ALTER TABLE usage_events ADD COLUMN vendor_unit_price TEXT NOT NULL DEFAULT '';
ALTER TABLE usage_events ADD COLUMN vendor_amount_nanos BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_daily ADD COLUMN vendor_amount_nanos BIGINT NOT NULL DEFAULT 0;
UPDATE usage_events SET vendor_unit_price = unit_price, vendor_amount_nanos = amount_nanos;
UPDATE usage_daily SET vendor_amount_nanos = amount_nanos;
