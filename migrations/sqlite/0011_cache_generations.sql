-- Generations of what every resource call reads but seldom changes, so a
-- node may keep it in memory: `facts` counts changes to entities, their
-- scenarios (use lists) and the catalog; `licenses` changes to licenses and
-- their versions. Every resource call reads both numbers in the same query
-- as its token and consent and drops what it kept under older numbers, so a
-- change made on any node applies to the very next call on every node.
-- Triggers, not application code, bump them: no write path can forget to.
CREATE TABLE cache_generations (
    name   TEXT PRIMARY KEY,
    value  INTEGER NOT NULL
);
INSERT INTO cache_generations (name, value) VALUES ('facts', 0), ('licenses', 0);

CREATE TRIGGER entities_insert_generation AFTER INSERT ON entities
BEGIN UPDATE cache_generations SET value = value + 1 WHERE name = 'facts'; END;
CREATE TRIGGER entities_update_generation AFTER UPDATE ON entities
BEGIN UPDATE cache_generations SET value = value + 1 WHERE name = 'facts'; END;
CREATE TRIGGER entities_delete_generation AFTER DELETE ON entities
BEGIN UPDATE cache_generations SET value = value + 1 WHERE name = 'facts'; END;
CREATE TRIGGER scenarios_insert_generation AFTER INSERT ON scenarios
BEGIN UPDATE cache_generations SET value = value + 1 WHERE name = 'facts'; END;
CREATE TRIGGER scenarios_update_generation AFTER UPDATE ON scenarios
BEGIN UPDATE cache_generations SET value = value + 1 WHERE name = 'facts'; END;
CREATE TRIGGER scenarios_delete_generation AFTER DELETE ON scenarios
BEGIN UPDATE cache_generations SET value = value + 1 WHERE name = 'facts'; END;
CREATE TRIGGER license_types_insert_generation AFTER INSERT ON license_types
BEGIN UPDATE cache_generations SET value = value + 1 WHERE name = 'facts'; END;
CREATE TRIGGER license_types_update_generation AFTER UPDATE ON license_types
BEGIN UPDATE cache_generations SET value = value + 1 WHERE name = 'facts'; END;
CREATE TRIGGER license_types_delete_generation AFTER DELETE ON license_types
BEGIN UPDATE cache_generations SET value = value + 1 WHERE name = 'facts'; END;
CREATE TRIGGER licenses_insert_generation AFTER INSERT ON licenses
BEGIN UPDATE cache_generations SET value = value + 1 WHERE name = 'licenses'; END;
CREATE TRIGGER licenses_update_generation AFTER UPDATE ON licenses
BEGIN UPDATE cache_generations SET value = value + 1 WHERE name = 'licenses'; END;
CREATE TRIGGER licenses_delete_generation AFTER DELETE ON licenses
BEGIN UPDATE cache_generations SET value = value + 1 WHERE name = 'licenses'; END;
CREATE TRIGGER license_versions_insert_generation AFTER INSERT ON license_versions
BEGIN UPDATE cache_generations SET value = value + 1 WHERE name = 'licenses'; END;
CREATE TRIGGER license_versions_update_generation AFTER UPDATE ON license_versions
BEGIN UPDATE cache_generations SET value = value + 1 WHERE name = 'licenses'; END;
CREATE TRIGGER license_versions_delete_generation AFTER DELETE ON license_versions
BEGIN UPDATE cache_generations SET value = value + 1 WHERE name = 'licenses'; END;
