-- Accounts of sites (officials and meeting rooms) and their activation links; invitations of
-- one account; the indexes that keep sign-in, "my meetings" and the sweep of expired logins
-- one lookup each with 150,000 accounts. An account without a password yet (waiting for its
-- activation link) has an empty password hash, which no password matches. The same schema as
-- sqlite/0007_site_accounts.sql.
ALTER TABLE accounts ADD COLUMN site_id TEXT REFERENCES sites(id);
CREATE INDEX accounts_site ON accounts(site_id);

-- Activation tokens, stored as their SHA-256 like login tokens.
CREATE TABLE activations (
    token_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX activations_account ON activations(account_id);

CREATE INDEX logins_expires ON logins(expires_at);

ALTER TABLE invitations ADD COLUMN account_id TEXT REFERENCES accounts(id);
CREATE INDEX invitations_site ON invitations(site_id);
CREATE INDEX invitations_account ON invitations(account_id);
