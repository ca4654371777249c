-- Generations of what every resource call reads but seldom changes, so a
-- node may keep it in memory: `facts` counts changes to entities, their
-- scenarios (use lists) and the catalog; `licenses` changes to licenses and
-- their versions. Every resource call reads both numbers in the same query
-- as its token and consent and drops what it kept under older numbers, so a
-- change made on any node applies to the very next call on every node.
-- Triggers, not application code, bump them: no write path can forget to.
CREATE TABLE cache_generations (
    name   TEXT PRIMARY KEY,
    value  BIGINT NOT NULL
);
INSERT INTO cache_generations (name, value) VALUES ('facts', 0), ('licenses', 0);

CREATE FUNCTION bump_cache_generation() RETURNS trigger AS $$
BEGIN
    UPDATE cache_generations SET value = value + 1 WHERE name = TG_ARGV[0];
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER entities_generation AFTER INSERT OR UPDATE OR DELETE ON entities
    FOR EACH STATEMENT EXECUTE FUNCTION bump_cache_generation('facts');
CREATE TRIGGER scenarios_generation AFTER INSERT OR UPDATE OR DELETE ON scenarios
    FOR EACH STATEMENT EXECUTE FUNCTION bump_cache_generation('facts');
CREATE TRIGGER license_types_generation AFTER INSERT OR UPDATE OR DELETE ON license_types
    FOR EACH STATEMENT EXECUTE FUNCTION bump_cache_generation('facts');
CREATE TRIGGER licenses_generation AFTER INSERT OR UPDATE OR DELETE ON licenses
    FOR EACH STATEMENT EXECUTE FUNCTION bump_cache_generation('licenses');
CREATE TRIGGER license_versions_generation AFTER INSERT OR UPDATE OR DELETE ON license_versions
    FOR EACH STATEMENT EXECUTE FUNCTION bump_cache_generation('licenses');
