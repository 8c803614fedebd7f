-- A meeting may record itself from the moment its room opens.
ALTER TABLE meetings ADD COLUMN auto_record BIGINT NOT NULL DEFAULT 0;
