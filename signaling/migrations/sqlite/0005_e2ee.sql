-- A confidential meeting, and whether its media is end-to-end encrypted (docs/e2ee.md). A
-- meeting scheduled before this migration is neither.
ALTER TABLE meetings ADD COLUMN confidential INTEGER NOT NULL DEFAULT 0;
ALTER TABLE meetings ADD COLUMN e2ee INTEGER NOT NULL DEFAULT 0;
