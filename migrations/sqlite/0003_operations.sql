-- rotate keeps the secret it replaced until the new one has been exported.
ALTER TABLE items ADD COLUMN previous_secret TEXT;
ALTER TABLE items ADD COLUMN exported_at BIGINT;
