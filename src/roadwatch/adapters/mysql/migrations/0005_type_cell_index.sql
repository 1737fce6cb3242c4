-- A small bounding box filtered by type (docs/contract/targets.md §3: REST p95 < 100 ms
-- over a million events).
--
-- idx_events_cell_started reads a cell in time order and skips the other types inside the
-- index, so a rare type in a busy cell made the scan run through tens of thousands of entries
-- before finding a page. With the type first, each (type, cell) pair is read on its own and
-- stops after one page of matches. The id follows the time so that the index order is the
-- listing order; status and position ride along for index condition pushdown, as in 0004.
ALTER TABLE events ADD INDEX IF NOT EXISTS idx_events_type_cell_started
    (type, grid_cell, started_at, id, status, lat, lon);
