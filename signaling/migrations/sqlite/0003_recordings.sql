-- Recordings of rooms. `meeting_id` is the room id: an open room (development) has a
-- free-form name and no meeting, so it is not a foreign key. The files live in the
-- recordings directory under the recording's id; this table is what the API lists.
CREATE TABLE recordings (
    id TEXT PRIMARY KEY,
    meeting_id TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    status TEXT NOT NULL,
    error TEXT,
    bytes INTEGER NOT NULL DEFAULT 0,
    started_by TEXT
);

CREATE INDEX recordings_meeting ON recordings(meeting_id);
CREATE INDEX recordings_status ON recordings(status);
