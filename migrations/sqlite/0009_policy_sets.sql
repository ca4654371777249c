-- Policy sets published by a reload (SIGHUP or the admin API) on any node:
-- every node applies the newest generation, so all nodes decide alike.
-- files: JSON {"schema": [name, text], "policies": [[name, text], ...]}.
CREATE TABLE policy_sets (
    generation  INTEGER PRIMARY KEY,
    digest      TEXT NOT NULL,
    files       TEXT NOT NULL,
    loaded_at   TEXT NOT NULL,
    loaded_by   TEXT NOT NULL
);
