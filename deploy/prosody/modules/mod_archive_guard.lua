-- Load on the main host, beside mod_mam (docs/DESIGN.md, "Collector: PubSub retries, archive
-- write failures, figures").
--
-- mod_mam archives each message for collector@ in MySQL; when that write fails (the database
-- is down) it only logs "Could not archive stanza" and goes on, and mod_offline, which stores
-- in the same database, fails too. A message for a collector that is offline, or whose session
-- hibernates past smacks_hibernation_time, is then bounced to the gateway, which already has
-- its XEP-0198 ack: the event is lost. This module:
--
-- 1. wraps the archive store that mod_mam opens, so that every failed append is counted and
--    kept in a spool on Prosody's local disk (util.datamanager, under data_path), which
--    survives a restart of Prosody;
-- 2. appends the spooled messages to the archive, in order, once the database answers again,
--    then hands each one, with its archive id (XEP-0359), to the user's available sessions
--    that read their archive (the collector does; it stores idempotently), so a collector that
--    went on live meanwhile does not step over it;
-- 3. claims the messages it spooled before mod_message and mod_smacks would bounce them (the
--    recipient offline, or its session gone): they reach the recipient through the archive;
-- 4. answers <query xmlns='urn:roadwatch:archive-guard:0'/> sent to the host by the JIDs of
--    archive_guard_readers with its figures, and counts them as Prosody metrics.

local st = require "util.stanza";
local jid_bare = require "util.jid".bare;
local jid_split = require "util.jid".split;
-- The file-based util.datamanager as it was before core.storagemanager pointed some of its
-- functions (users() among them) at the configured storage, which is MySQL here.
local datamanager = require "core.storagemanager".olddm;
local modulemanager = require "core.modulemanager";

local host = module.host;
local bare_sessions = prosody.bare_sessions;
local full_sessions = prosody.full_sessions;

local xmlns_guard = "urn:roadwatch:archive-guard:0";
local xmlns_st_id = "urn:xmpp:sid:0";
-- The spool's name under data_path/<host>/.
local spool = "archive_guard";

local archive_store_name = module:get_option_string("archive_store", "archive");
local retry_interval = module:get_option_number("archive_guard_retry_interval", 5);
-- Bounded: past this many spooled messages a failure is only counted (as dropped).
local max_pending = module:get_option_number("archive_guard_max_pending", 100000);
local readers = module:get_option_set("archive_guard_readers", {});

local failures_metric = module:metric("counter", "failures", "",
	"Archive writes that failed (each kept in the spool unless dropped)", {});
local recovered_metric = module:metric("counter", "recovered", "",
	"Spooled messages appended to the archive once storage answered again", {});
local dropped_metric = module:metric("counter", "dropped", "",
	"Failed archive writes that the full spool could not keep", {});

local counts = { failures = 0, recovered = 0, dropped = 0 };
local last_failure, last_error;
-- [username] = { first, last, items = { [i] = { when, with, key, stanza } } }, in failure
-- order; items before `first` were archived.
local pending = {};
local pending_count = 0;
-- Identity of each spooled message (recipient, sender and stanza id) -> how many copies.
local spooled_keys = {};
local raw_archive;
local retry_timer;
-- False once this module is unloaded: mod_mam keeps the wrapped store, which then only passes
-- calls through.
local active = true;

local function message_key(username, stanza)
	local id = stanza.attr.id;
	if not (username and id) then
		return nil; -- anonymous stanzas cannot be recognised later; they are still spooled
	end
	return username .. "\0" .. (stanza.attr.from or "") .. "\0" .. id;
end

local function remember_key(key)
	if key then
		spooled_keys[key] = (spooled_keys[key] or 0) + 1;
	end
end

local function forget_key(key)
	local copies = key and spooled_keys[key];
	if copies then
		spooled_keys[key] = copies > 1 and copies - 1 or nil;
	end
end

local function save_spool(username)
	local queue = pending[username];
	local rest = {};
	if queue then
		for i = queue.first, queue.last do
			rest[#rest + 1] = queue.items[i];
		end
	end
	datamanager.list_store(username, host, spool, rest);
end

-- Hand a message now archived to the sessions that read the archive (see 2. above).
local function redeliver(username, stanza, archive_id)
	local bare = username .. "@" .. host;
	local user = bare_sessions[bare];
	if not (user and user.top_resources) then
		return;
	end
	local copy = st.clone(stanza);
	copy:tag("stanza-id", { xmlns = xmlns_st_id, by = bare, id = archive_id }):up();
	for _, session in ipairs(user.top_resources) do
		if session.mam_requested then
			session.send(copy);
		end
	end
end

local function retry()
	if not raw_archive then
		return retry_interval;
	end
	for username, queue in pairs(pending) do
		local items = queue.items;
		local appended = 0;
		while queue.first <= queue.last do
			local item = items[queue.first];
			local stanza = st.deserialize(item.stanza);
			local id, err = raw_archive:append(username, nil, stanza, item.when, item.with);
			if not id then
				if appended > 0 then
					save_spool(username);
				end
				module:log("debug", "Archive still failing (%s); %d messages wait", err, pending_count);
				return retry_interval;
			end
			items[queue.first] = nil;
			queue.first = queue.first + 1;
			appended = appended + 1;
			pending_count = pending_count - 1;
			counts.recovered = counts.recovered + 1;
			recovered_metric:with_labels():add(1);
			forget_key(item.key);
			redeliver(username, stanza, id);
		end
		pending[username] = nil;
		save_spool(username);
		module:log("info", "Archived %d messages for %s that had failed to archive", appended, username);
	end
	retry_timer = nil;
	return nil; -- nothing left: the next failure starts the timer again
end

local function keep(username, stanza, when, with, err)
	counts.failures = counts.failures + 1;
	failures_metric:with_labels():add(1);
	last_failure, last_error = os.time(), tostring(err);
	if pending_count >= max_pending then
		counts.dropped = counts.dropped + 1;
		dropped_metric:with_labels():add(1);
		module:log("error", "Archive spool full (%d): a message for %s has no archive copy",
			pending_count, username);
		return;
	end
	local item = {
		when = when or os.time();
		with = with;
		key = message_key(username, stanza);
		stanza = st.preserialize(stanza);
	};
	local ok, spool_err = datamanager.list_append(username, host, spool, item);
	if not ok then
		-- Still kept in memory: only a restart of Prosody before the retry would lose it.
		module:log("error", "Cannot write the archive spool for %s: %s", username, spool_err);
	end
	local queue = pending[username];
	if not queue then
		queue = { first = 1, last = 0, items = {} };
		pending[username] = queue;
	end
	queue.last = queue.last + 1;
	queue.items[queue.last] = item;
	pending_count = pending_count + 1;
	remember_key(item.key);
	if pending_count == 1 then
		module:log("warn", "Archive writes fail (%s): spooling messages until storage answers", err);
	end
	if not retry_timer then
		retry_timer = module:add_timer(retry_interval, retry);
	end
end

-- Wrap mod_mam's archive store; its other methods are the store's own.
module:hook("store-opened", function (event)
	if event.store_name ~= archive_store_name or event.store_type ~= "archive" then
		return;
	end
	local store = event.store;
	raw_archive = store;
	event.store = setmetatable({
		append = function (_, username, key, value, when, with)
			local id, err = store:append(username, key, value, when, with);
			-- mod_mam handles a full quota itself (cleans up and tries again).
			if active and not id and err ~= "quota-limit" and username and st.is_stanza(value) then
				keep(username, value, when, with, err);
			end
			return id, err;
		end;
	}, { __index = store });
	module:log("debug", "Guarding the %s archive store", archive_store_name);
end);

-- Messages spooled for a recipient with no session would be bounced by mod_message (its
-- offline storage fails too): the archive will deliver them instead. Between mod_mam (0) and
-- mod_message (-1).
local function claim_if_undeliverable(event)
	local stanza = event.stanza;
	local to = stanza.attr.to;
	if stanza.attr.type == "error" or not to then
		return;
	end
	local key = message_key((jid_split(to)), stanza);
	if not (key and spooled_keys[key]) then
		return;
	end
	if full_sessions[to] then
		return;
	end
	local user = bare_sessions[jid_bare(to)];
	if user and user.top_resources and #user.top_resources > 0 then
		return; -- delivered live as usual; the archive copy follows
	end
	module:log("debug", "Keeping %s for the archive instead of bouncing it", stanza:top_tag());
	return true;
end
module:hook("message/bare", claim_if_undeliverable, -0.5);
module:hook("message/full", claim_if_undeliverable, -0.5);

-- Same for what a dying session had not acknowledged (mod_smacks, priority 0, would try
-- offline storage and bounce).
module:hook("delivery/failure", function (event)
	local session, stanza = event.session, event.stanza;
	if stanza.name ~= "message" or not session.username then
		return;
	end
	local key = message_key(session.username, stanza);
	if key and spooled_keys[key] then
		return true;
	end
end, 1);

module:hook("iq-get/host/" .. xmlns_guard .. ":query", function (event)
	local origin, stanza = event.origin, event.stanza;
	if not readers:contains(jid_bare(stanza.attr.from)) then
		origin.send(st.error_reply(stanza, "auth", "forbidden"));
		return true;
	end
	local figures = {
		failures = tostring(counts.failures);
		recovered = tostring(counts.recovered);
		dropped = tostring(counts.dropped);
		pending = tostring(pending_count);
	};
	if last_failure then
		-- An age rather than a date: the reader's clock may differ from ours.
		figures["seconds-since-failure"] = tostring(os.time() - last_failure);
	end
	local reply = st.reply(stanza):tag("query", { xmlns = xmlns_guard }):tag("archive", figures);
	if last_error then
		reply:text_tag("error", last_error);
	end
	origin.send(reply);
	return true;
end);

-- Spooled messages of a previous run of Prosody.
local function load_spool()
	for username in datamanager.users(host, spool, "list") do
		local items = datamanager.list_load(username, host, spool);
		if items and #items > 0 then
			pending[username] = { first = 1, last = #items, items = items };
			pending_count = pending_count + #items;
			for _, item in ipairs(items) do
				remember_key(item.key);
			end
		end
	end
	if pending_count > 0 then
		module:log("warn", "%d messages from a previous run still wait for the archive", pending_count);
		retry_timer = module:add_timer(retry_interval, retry);
	end
end

function module.load()
	load_spool();
	-- mod_mam opens its store when it loads: if it came first, load it again through the hook.
	if modulemanager.is_loaded(host, "mam") and not raw_archive then
		modulemanager.reload(host, "mam");
	end
	if not raw_archive then
		module:log("debug", "mod_mam not loaded yet; its store will be guarded when it opens");
	end
end

function module.unload()
	active = false;
end
