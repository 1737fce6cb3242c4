-- Events (docs/contract/events.md §1), one row per event id holding its highest version
-- (docs/contract/storage.md §2).
-- Times are DATETIME(3) in UTC, taken from event time, never from the server clock.
-- Identifiers use utf8mb4_bin: exact, case-sensitive matches. Columns are wide enough for
-- what the event contract accepts (ids and zone ids up to 64 characters, 64-bit versions,
-- 32-bit cause codes), so that one unusual event cannot make a whole batch fail.

CREATE TABLE IF NOT EXISTS events (
    id            VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    type          VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    status        VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    version       BIGINT UNSIGNED NOT NULL,
    started_at    DATETIME(3) NOT NULL,
    updated_at    DATETIME(3) NOT NULL,
    ended_at      DATETIME(3) NULL,
    lat           DOUBLE NOT NULL,
    lon           DOUBLE NOT NULL,
    cause_code    INT NULL,
    zone_id       VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    zone_name     VARCHAR(200) NULL,
    station_count INT UNSIGNED NOT NULL DEFAULT 0,
    -- The station list is kept here too, so reading an event needs no join.
    station_ids   JSON NOT NULL,
    details       JSON NOT NULL,
    -- Server time of the last change: for measuring delivery latency, never an event time.
    stored_at     DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    PRIMARY KEY (id),
    -- InnoDB appends the primary key to every secondary index, so each of these also serves
    -- "ORDER BY started_at DESC, id DESC" keyset pagination within its filter.
    KEY idx_events_started (started_at),
    KEY idx_events_type_started (type, started_at),
    KEY idx_events_status_started (status, started_at),
    KEY idx_events_zone_started (zone_id, started_at),
    KEY idx_events_position (lat, lon),
    KEY idx_events_updated (updated_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- The stations involved in each event's latest version, to find a station's events fast.
-- started_at is copied from the event so that the index is "station, then time".
CREATE TABLE IF NOT EXISTS event_stations (
    event_id   VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    station_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    started_at DATETIME(3) NOT NULL,
    PRIMARY KEY (event_id, station_id),
    KEY idx_event_stations_station_started (station_id, started_at, event_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Small durable key/value state of the services (the collector's archive position).
CREATE TABLE IF NOT EXISTS collector_state (
    state_key  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    value      TEXT NOT NULL,
    updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    PRIMARY KEY (state_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
