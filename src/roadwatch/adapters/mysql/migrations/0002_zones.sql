-- Zones of docs/contract/detection.md §6 and docs/contract/rest-api.md §8: a GeoJSON Feature
-- (Polygon or MultiPolygon) with properties id and name. The bounding box lets a query discard far
-- zones before any polygon test.

CREATE TABLE IF NOT EXISTS zones (
    id           VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    name         VARCHAR(200) NOT NULL,
    feature      JSON NOT NULL,
    -- Metres outside the polygon before an exit counts (docs/contract/detection.md §6), 0 by default.
    hysteresis_m DOUBLE NOT NULL DEFAULT 0,
    min_lat      DOUBLE NOT NULL,
    min_lon      DOUBLE NOT NULL,
    max_lat      DOUBLE NOT NULL,
    max_lon      DOUBLE NOT NULL,
    version      INT UNSIGNED NOT NULL DEFAULT 1,
    created_at   DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at   DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    PRIMARY KEY (id),
    KEY idx_zones_bbox (min_lat, max_lat, min_lon, max_lon)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
