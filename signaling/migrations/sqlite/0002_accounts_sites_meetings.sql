-- Accounts, their logins, the site directory, meetings and their invitations. The attendance
-- log gains who joined (invitation, site, role) and how well; its times become milliseconds,
-- and it no longer needs the rooms table, because a room without a meeting (a development
-- "open room") is a free-form name.
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE TABLE logins (
    token_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE INDEX logins_account ON logins(account_id);

CREATE TABLE sites (
    id TEXT PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    parent_id TEXT REFERENCES sites(id),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE meetings (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    starts_at INTEGER NOT NULL,
    ends_at INTEGER NOT NULL,
    admission TEXT NOT NULL,
    status TEXT NOT NULL,
    organizer_id TEXT NOT NULL REFERENCES accounts(id),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE INDEX meetings_organizer ON meetings(organizer_id);

CREATE TABLE invitations (
    id TEXT PRIMARY KEY,
    meeting_id TEXT NOT NULL REFERENCES meetings(id),
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    site_id TEXT REFERENCES sites(id),
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE INDEX invitations_meeting ON invitations(meeting_id);

CREATE TABLE attendance_v2 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    invitation_id TEXT,
    site_id TEXT,
    role TEXT NOT NULL DEFAULT 'participant',
    display_name TEXT NOT NULL,
    joined_at INTEGER NOT NULL,
    left_at INTEGER,
    leave_reason TEXT,
    quality TEXT,
    quality_at INTEGER
);

INSERT INTO attendance_v2 (id, room, participant_id, display_name, joined_at, left_at, leave_reason)
SELECT id, room, participant_id, display_name, joined_at * 1000, left_at * 1000, leave_reason
FROM attendance;

DROP TABLE attendance;
DROP TABLE rooms;
ALTER TABLE attendance_v2 RENAME TO attendance;

CREATE INDEX attendance_room ON attendance(room);
CREATE INDEX attendance_participant ON attendance(participant_id);
