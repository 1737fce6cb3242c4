-- Zone changes made through the REST API reach the gateway by polling one counter
-- (docs/contract/detection.md §6: changes reach it without a restart). Every write to `zones` bumps
-- it in the same transaction, so deletions are seen too and the poll is a primary-key read.

CREATE TABLE IF NOT EXISTS zone_revision (
    id       TINYINT UNSIGNED NOT NULL,
    revision BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT zone_revision_single_row CHECK (id = 1)
) ENGINE = InnoDB;

-- Revision 0 means "never seeded nor edited": the zones file is loaded only then. Zones that
-- already exist when this runs count as edited, so they are never overwritten by the file.
INSERT IGNORE INTO zone_revision (id, revision)
SELECT 1, IF(COUNT(*) > 0, 1, 0) FROM zones;

-- Occupancy (docs/contract/rest-api.md §8, stations inside a zone now) reads every zone event of
-- one zone: this index holds zone, type and time, and with the primary key appended it covers that
-- scan.
ALTER TABLE events ADD INDEX IF NOT EXISTS idx_events_zone_type_started (zone_id, type, started_at);
