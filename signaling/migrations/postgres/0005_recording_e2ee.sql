-- Whether a recording holds end-to-end encrypted media (docs/e2ee.md): its files then play
-- back only where the keys are, and it has no mixed audio.
ALTER TABLE recordings ADD COLUMN e2ee BIGINT NOT NULL DEFAULT 0;
