-- Fast reads over a million events (docs/contract/targets.md §3) and the statistics of
-- docs/contract/rest-api.md §9.
--
-- grid_cell numbers the 0.005° x 0.005° square holding the event (about 560 m x 370 m in
-- Reims): small bounding boxes are answered cell by cell, and hotspots count events per cell.
-- The formula is mirrored in roadwatch.adapters.mysql.stats (GRID_STEPS_PER_DEGREE = 200).
-- Computed by the server, so every writer (the collector, the seeding command, a hand-written
-- INSERT) fills it the same way.
ALTER TABLE events ADD COLUMN IF NOT EXISTS grid_cell INT UNSIGNED
    AS (FLOOR((lat + 90) * 200) * 72001 + FLOOR((lon + 180) * 200)) PERSISTENT;

-- One cell in time order, the id named right after the time so that the index order is the
-- listing order (started_at DESC, id DESC). The filter columns ride along so that index
-- condition pushdown rejects non-matching entries without reading their rows.
ALTER TABLE events ADD INDEX IF NOT EXISTS idx_events_cell_started
    (grid_cell, started_at, id, type, status, lat, lon);

-- Type and status together (the live "active accidents" listing) in time order.
ALTER TABLE events ADD INDEX IF NOT EXISTS idx_events_type_status_started (type, status, started_at);

-- Covers the raw counts of statistics at the edges of a range (partial hours and days).
ALTER TABLE events ADD INDEX IF NOT EXISTS idx_events_started_counts
    (started_at, type, status, grid_cell);

-- Event counts per hour of start, type and status (summary and time series).
CREATE TABLE IF NOT EXISTS event_counts_hourly (
    hour_start DATETIME NOT NULL,
    type       VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    status     VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    events     BIGINT NOT NULL,
    PRIMARY KEY (hour_start, type, status)
) ENGINE = InnoDB;

-- Event counts per day of start, type and grid cell (hotspots).
CREATE TABLE IF NOT EXISTS event_cells_daily (
    day       DATE NOT NULL,
    type      VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    grid_cell INT UNSIGNED NOT NULL,
    events    BIGINT NOT NULL,
    PRIMARY KEY (type, day, grid_cell)
) ENGINE = InnoDB;

-- Triggers keep both tables equal to aggregates of `events` in the same transaction as each
-- change, whoever makes it. Each body is one statement (the migration runner splits on `;`).
-- An update moves a count only when the row changes hour, day, type, status or cell: a jam's
-- periodic new version costs nothing here.
CREATE TRIGGER IF NOT EXISTS events_counts_insert AFTER INSERT ON events FOR EACH ROW
    INSERT INTO event_counts_hourly (hour_start, type, status, events)
    VALUES (DATE_FORMAT(NEW.started_at, '%Y-%m-%d %H:00:00'), NEW.type, NEW.status, 1)
    ON DUPLICATE KEY UPDATE events = events + 1;

CREATE TRIGGER IF NOT EXISTS events_cells_insert AFTER INSERT ON events FOR EACH ROW
    FOLLOWS events_counts_insert
    INSERT INTO event_cells_daily (day, type, grid_cell, events)
    VALUES (DATE(NEW.started_at), NEW.type, NEW.grid_cell, 1)
    ON DUPLICATE KEY UPDATE events = events + 1;

CREATE TRIGGER IF NOT EXISTS events_counts_update AFTER UPDATE ON events FOR EACH ROW
    INSERT INTO event_counts_hourly (hour_start, type, status, events)
    SELECT moved.h, moved.t, moved.s, moved.n FROM (
        SELECT DATE_FORMAT(OLD.started_at, '%Y-%m-%d %H:00:00') AS h, OLD.type AS t,
               OLD.status AS s, -1 AS n
        UNION ALL
        SELECT DATE_FORMAT(NEW.started_at, '%Y-%m-%d %H:00:00'), NEW.type, NEW.status, 1
    ) AS moved
    WHERE OLD.type <> NEW.type OR OLD.status <> NEW.status
       OR DATE_FORMAT(OLD.started_at, '%Y-%m-%d %H') <> DATE_FORMAT(NEW.started_at, '%Y-%m-%d %H')
    ON DUPLICATE KEY UPDATE events = events + VALUES(events);

CREATE TRIGGER IF NOT EXISTS events_cells_update AFTER UPDATE ON events FOR EACH ROW
    FOLLOWS events_counts_update
    INSERT INTO event_cells_daily (day, type, grid_cell, events)
    SELECT moved.d, moved.t, moved.c, moved.n FROM (
        SELECT DATE(OLD.started_at) AS d, OLD.type AS t, OLD.grid_cell AS c, -1 AS n
        UNION ALL
        SELECT DATE(NEW.started_at), NEW.type, NEW.grid_cell, 1
    ) AS moved
    WHERE OLD.type <> NEW.type OR OLD.grid_cell <> NEW.grid_cell
       OR DATE(OLD.started_at) <> DATE(NEW.started_at)
    ON DUPLICATE KEY UPDATE events = events + VALUES(events);

CREATE TRIGGER IF NOT EXISTS events_counts_delete AFTER DELETE ON events FOR EACH ROW
    UPDATE event_counts_hourly SET events = events - 1
    WHERE hour_start = DATE_FORMAT(OLD.started_at, '%Y-%m-%d %H:00:00')
      AND type = OLD.type AND status = OLD.status;

CREATE TRIGGER IF NOT EXISTS events_cells_delete AFTER DELETE ON events FOR EACH ROW
    FOLLOWS events_counts_delete
    UPDATE event_cells_daily SET events = events - 1
    WHERE day = DATE(OLD.started_at) AND type = OLD.type AND grid_cell = OLD.grid_cell;

-- Events stored before this migration.
INSERT INTO event_counts_hourly (hour_start, type, status, events)
SELECT DATE_FORMAT(started_at, '%Y-%m-%d %H:00:00'), type, status, COUNT(*)
FROM events GROUP BY 1, 2, 3
ON DUPLICATE KEY UPDATE events = VALUES(events);

INSERT INTO event_cells_daily (day, type, grid_cell, events)
SELECT DATE(started_at), type, grid_cell, COUNT(*)
FROM events GROUP BY 1, 2, 3
ON DUPLICATE KEY UPDATE events = VALUES(events);
