-- Load on the PubSub component, beside mod_pubsub; bench/pubsub.py measures the difference.
--
-- Prosody 0.12 keeps persistent PubSub items in its SQL archive store and writes each published
-- item there on its only thread, before it notifies anyone: an append transaction (DELETE by
-- item id, INSERT), then a truncation to max_items (a DELETE joined on the node's rows sorted),
-- which empties the store's count cache, so the next append first runs a SELECT COUNT(*):
-- four statements and three commits per item, while the whole server (BOSH, c2s, notifications)
-- waits. bench/pubsub.py measured about 300 publishes/s at most, with Prosody and MariaDB
-- mostly idle; reading a node's items (every page load) parsed up to max_items rows from SQL.
--
-- This module gives each persistent node an item store that:
-- 1. holds the node's items in memory, newest first, up to max_items (loaded once from SQL):
--    reading items costs no SQL;
-- 2. writes changes to the same SQL archive rows as Prosody would (so Prosody alone reads them
--    back after a restart), in groups: once the server has handled the network input at hand
--    (or pubsub_batch_delay seconds later), one transaction per node writes every item changed
--    since (one DELETE, one multi-row INSERT), and truncates the node's rows only once they
--    exceed max_items by a margin;
-- 3. keeps the changes it could not write (the database down) and retries, serving the items
--    from memory meanwhile, and writes what is pending when Prosody stops.
-- The price: a publish is acknowledged just before its row is committed, so a crash of Prosody
-- (not a stop) can lose the item writes of its last round of input; the events themselves are
-- stored by the collector before it publishes them.

local cache = require "util.cache";
local sql = require "util.sql";
local st = require "util.stanza";
local storagemanager = require "core.storagemanager";

local xmlns_pubsub = "http://jabber.org/protocol/pubsub";

-- How long changes gather before they are written. 0: at the end of the server's current round
-- of network input, so that what one read brought becomes one transaction.
local batch_delay = module:get_option_number("pubsub_batch_delay", 0);
-- Rows per multi-row statement (each statement is prepared once per row count).
local chunk_size = module:get_option_number("pubsub_batch_chunk", 50);
local retry_min, retry_max = 1, 30;
-- After a failed load of a node's rows, try again on a read at most this often.
local reload_interval = 5;
local unpack = table.unpack or unpack; -- luacheck: ignore 113

local mod_pubsub = module:depends("pubsub");
local host = module.host;

-- The SQL engine mod_storage_sql shares for our database (its own lookup key), if storage is
-- SQL; otherwise each change is written through the archive store, one by one.
local function shared_engine()
	local params = module:get_option("sql");
	if type(params) ~= "table" or params.driver ~= "MySQL" then
		return nil;
	end
	local uri = sql.db2uri({
		driver = params.driver; database = params.database; username = params.username;
		password = params.password; host = params.host; port = params.port;
	});
	return module:shared("/*/sql/connections")[uri];
end

local function encapsulate(id, payload, publisher)
	local item = st.stanza("item", { id = id, publisher = publisher, xmlns = xmlns_pubsub });
	item:add_child(payload);
	return item;
end

local function placeholders(rows, per_row)
	local row = "(" .. string.rep("?", per_row, ",") .. ")";
	return string.rep(row, rows, ",");
end

local stores = {}; -- node name -> its store, for the flush at shutdown
local store_methods = {};
local store_mt = { __index = store_methods };

local function new_store(node_config, node_name)
	local driver = storagemanager.get_driver(host, "pubsub_data");
	local max_items = node_config["max_items"];
	if max_items == "max" then
		max_items = mod_pubsub.service.config.max_items;
	end
	max_items = tonumber(max_items) or mod_pubsub.service.config.max_items;
	local previous = stores[node_name];
	if previous then
		previous:flush(); -- the node's store is being replaced (configuration changed)
	end
	local store = setmetatable({
		node = node_name;
		store_name = "pubsub_" .. node_name;
		archive = driver:open("pubsub_" .. node_name, "archive");
		max_items = max_items;
		memory = nil; -- util.cache, loaded on first use
		loaded = false; -- false while the stored rows could not be read
		load_tried = nil;
		rows = nil; -- how many rows SQL may hold for the node (an upper bound)
		pending = {}; -- item id -> { seq, item or false (retracted) }
		pending_count = 0;
		seq = 0;
		timer = nil;
		retry = retry_min;
	}, store_mt);
	stores[node_name] = store;
	return store;
end

function store_methods:load()
	if self.loaded then
		return self.memory;
	end
	local now = os.time();
	if self.memory and self.load_tried and now - self.load_tried < reload_interval then
		return self.memory;
	end
	self.load_tried = now;
	self.memory = self.memory or cache.new(self.max_items);
	local data, err = self.archive:find(nil, { limit = self.max_items; reverse = true });
	if not data then
		-- Serve what is published meanwhile; the stored rows join it once they can be read.
		module:log("error", "Cannot load the items of node %s: %s", self.node, err);
		return self.memory;
	end
	local stored = {};
	for id, payload, _, publisher in data do
		stored[#stored + 1] = encapsulate(id, payload, publisher ~= "" and publisher or nil);
	end
	-- Oldest first, so that the newest ends at the head; what was published since the failed
	-- load is newer than every stored row.
	local memory = cache.new(self.max_items);
	for i = #stored, 1, -1 do
		local id = stored[i].attr.id;
		if self.memory:get(id) == nil and not self.pending[id] then
			memory:set(id, stored[i]);
		end
	end
	local newer = {};
	for id, item in self.memory:items() do
		newer[#newer + 1] = { id, item };
	end
	for i = #newer, 1, -1 do
		memory:set(newer[i][1], newer[i][2]);
	end
	self.memory, self.loaded = memory, true;
	-- Rows beyond max_items may be left from a larger limit: an upper bound that makes the
	-- next writes truncate.
	self.rows = (self.rows or 0) + (#stored >= self.max_items and 2 * self.max_items or #stored);
	return memory;
end

function store_methods:items()
	return self:load():items();
end

function store_methods:get(key)
	return self:load():get(key);
end

function store_methods:head()
	return self:load():head();
end

function store_methods:tail()
	return self:load():tail();
end

function store_methods:set(key, value)
	local memory = self:load();
	memory:set(key, value);
	self.seq = self.seq + 1;
	if not self.pending[key] then
		self.pending_count = self.pending_count + 1;
	end
	self.pending[key] = { self.seq, value or false };
	if self.pending_count > 2 * self.max_items then
		self:forget_evicted(); -- the database is down, or far behind
	end
	self:schedule(batch_delay);
	return key;
end

-- Drop the pending writes of items that newer ones pushed out of the node: only the newest
-- max_items rows are kept anyway, so the pending writes stay as bounded as the node.
function store_methods:forget_evicted()
	local memory = self.memory;
	for key, change in pairs(self.pending) do
		if change[2] and memory:get(key) == nil then
			self.pending[key] = nil;
			self.pending_count = self.pending_count - 1;
		end
	end
end

function store_methods:clear()
	self.memory, self.loaded = cache.new(self.max_items), true;
	self.pending, self.pending_count = {}, 0;
	self.rows = 0;
	return self.archive:delete(nil);
end

function store_methods:resize(size)
	size = tonumber(size) or self.max_items;
	self.max_items = size;
	self:load():resize(size);
	self.rows = (self.rows or 0) + 2 * size; -- truncate at the next write
	self:schedule(0);
	return true;
end

function store_methods:schedule(delay)
	if self.timer then
		return;
	end
	self.timer = module:add_timer(delay, function ()
		self.timer = nil;
		self:flush();
	end);
end

-- Take the pending changes, oldest change first.
function store_methods:take()
	local changes = {};
	for key, change in pairs(self.pending) do
		changes[#changes + 1] = { key = key, seq = change[1], item = change[2] };
	end
	table.sort(changes, function (a, b) return a.seq < b.seq; end);
	self.pending, self.pending_count = {}, 0;
	return changes;
end

-- Put back changes that could not be written, unless newer ones came meanwhile.
function store_methods:restore(changes)
	for _, change in ipairs(changes) do
		if not self.pending[change.key] then
			self.pending[change.key] = { change.seq, change.item };
			self.pending_count = self.pending_count + 1;
		end
	end
end

function store_methods:truncation_due()
	local margin = math.max(50, math.floor(self.max_items / 10));
	return (self.rows or 0) > self.max_items + margin;
end

local function write_batch(engine, store, changes, when, rows_before)
	store.rows = rows_before; -- the engine retries the whole batch once on a lost connection
	local keys, rows = {}, {};
	for _, change in ipairs(changes) do
		keys[#keys + 1] = change.key;
		if change.item then
			local payload = change.item.tags[1];
			rows[#rows + 1] = {
				host, "", store.store_name, when, change.item.attr.publisher or "", change.key,
				"xml", tostring(payload),
			};
		end
	end
	local prefix = { host, "", store.store_name };
	for first = 1, #keys, chunk_size do
		local last = math.min(first + chunk_size - 1, #keys);
		local args = { unpack(prefix) };
		for i = first, last do
			args[#args + 1] = keys[i];
		end
		local deleted = engine:delete(([[
			DELETE FROM "prosodyarchive"
			WHERE "host"=? AND "user"=? AND "store"=? AND "key" IN (%s);
		]]):format(string.rep("?", last - first + 1, ",")), unpack(args));
		store.rows = (store.rows or 0) - (deleted and deleted:affected() or 0);
	end
	for first = 1, #rows, chunk_size do
		local last = math.min(first + chunk_size - 1, #rows);
		local args = {};
		for i = first, last do
			for _, value in ipairs(rows[i]) do
				args[#args + 1] = value;
			end
		end
		engine:insert(([[
			INSERT INTO "prosodyarchive"
			("host", "user", "store", "when", "with", "key", "type", "value")
			VALUES %s;
		]]):format(placeholders(last - first + 1, 8)), unpack(args));
		store.rows = (store.rows or 0) + (last - first + 1);
	end
	if store:truncation_due() then
		-- As mod_storage_sql truncates for MySQL: keep the newest max_items rows.
		engine:delete(([[
			DELETE result FROM prosodyarchive AS result JOIN (
				SELECT sort_id FROM prosodyarchive
				WHERE `host`=? AND `user`=? AND `store`=?
				ORDER BY sort_id DESC
				LIMIT 18446744073709551615 OFFSET %d
			) AS limiter ON result.sort_id = limiter.sort_id;
		]]):format(store.max_items), host, "", store.store_name);
		store.rows = store.max_items;
	end
end

-- Without a shared SQL engine: through the archive store, as Prosody's own item store does.
local function write_through_archive(store, changes, when)
	for _, change in ipairs(changes) do
		local ok, err;
		if change.item then
			ok, err = store.archive:append(nil, change.key, change.item.tags[1], when,
				change.item.attr.publisher);
		else
			ok, err = store.archive:delete(nil, { key = change.key });
		end
		if not ok then
			error(err or "archive write failed");
		end
	end
	local ok, err = store.archive:delete(nil, { truncate = store.max_items });
	if not ok then
		error(err or "archive truncation failed");
	end
end

function store_methods:flush()
	if self.pending_count == 0 then
		return true;
	end
	local changes = self:take();
	local when = os.time();
	local engine = shared_engine();
	local rows_before = self.rows;
	local ok, err;
	if engine then
		ok, err = engine:transaction(write_batch, engine, self, changes, when, rows_before);
	else
		ok, err = pcall(write_through_archive, self, changes, when);
	end
	if ok then
		self.retry = retry_min;
		if self.pending_count > 0 then
			self:schedule(batch_delay);
		end
		return true;
	end
	-- Rolled back: nothing of this batch was written.
	self.rows = rows_before;
	self:restore(changes);
	module:log("warn", "Cannot write %d items of node %s (retrying in %d s): %s",
		#changes, self.node, self.retry, err);
	local delay = self.retry;
	self.retry = math.min(self.retry * 2, retry_max);
	self:schedule(delay);
	return false;
end

local service = mod_pubsub.service;
local original_itemstore = service.config.itemstore;
service.config.itemstore = new_store;
-- mod_pubsub made the stores of the nodes it loaded at start: swap them before any is used.
for node_name, node in pairs(service.nodes) do
	if node.config.persist_items then
		service.data[node_name] = new_store(node.config, node_name);
	end
end

local function flush_all()
	for _, store in pairs(stores) do
		if store.timer then
			store.timer:stop();
			store.timer = nil;
		end
		store:flush();
	end
end

module:hook_global("server-stopping", flush_all);

function module.unload()
	flush_all();
	if service.config.itemstore == new_store then
		service.config.itemstore = original_itemstore;
	end
	for node_name, store in pairs(stores) do
		local node = service.nodes[node_name];
		if service.data[node_name] == store and node then
			service.data[node_name] = original_itemstore(node.config, node_name);
		end
	end
end
