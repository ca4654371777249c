-- Access tokens revoked before their expiry (RFC 7009), by jti. A row is
-- useless once the token has expired (expires_at, unix seconds) and is pruned.
CREATE TABLE revoked_tokens (
    jti         TEXT PRIMARY KEY,
    client_id   TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  TEXT NOT NULL
);
