-- Bounds on what an ordinary account of the services' host costs (docs/DESIGN.md, "XMPP").
--
-- Any account (followers get one) could otherwise flood Prosody's one thread and fill its own
-- archive, another account's archive (kept a week) or its offline store (kept until it logs
-- in) without limit. For every account but the exempt service accounts (gateway@ and
-- collector@, which carry the whole event flow):
--
-- 1. input: the bytes read from its c2s connections share one token bucket per account; past
--    it, Prosody stops reading them for a while (TCP back-pressure, as mod_limits does), so a
--    flood slows down instead of being lost;
-- 2. stored messages: every copy stored in an archive or offline store counts against a token
--    bucket (copies and bytes) of the account holding it and, when another account sent it,
--    of the sender too. Once either bucket is empty, messages from or to that account are
--    refused with <resource-constraint/> (type wait) before anything stores or delivers them;
--    the bucket refills at a daily rate;
-- 3. offline storage: an account holds at most a fixed number of offline messages, since they
--    never expire; more are refused the same way.
--
-- Prosody's own mod_limits is not used: it is global, so it also throttles the HTTP
-- connections Apache reuses for every browser's BOSH session.

local filters = require "util.filters";
local jid_bare = require "util.jid".bare;
local jid_split = require "util.jid".split;
local st = require "util.stanza";
local now = require "util.time".now;

local host = module.host;
local bare_sessions = prosody.bare_sessions;
local full_sessions = prosody.full_sessions;
local m_min = math.min;

local DAY_S = 86400;
-- Full buckets are forgotten this often: a full bucket is the same as none.
local PRUNE_INTERVAL_S = 3600;

local input_rate = module:get_option_number("account_limits_input_rate", 10240); -- bytes/s
local input_burst = input_rate * module:get_option_number("account_limits_input_burst", 2);
local burst_copies = module:get_option_number("account_limits_burst_messages", 300);
local burst_bytes = module:get_option_number("account_limits_burst_bytes", 1048576);
local copies_per_s = module:get_option_number("account_limits_daily_messages", 1000) / DAY_S;
local bytes_per_s = module:get_option_number("account_limits_daily_bytes", 4194304) / DAY_S;
local offline_max = module:get_option_number("account_limits_offline_messages", 100);

-- Usernames of this host's exempt accounts.
local exempt = {};
for address in module:get_option_set("account_limits_exempt", {}) do
	local node, address_host = jid_split(address);
	if node and address_host == host then
		exempt[node] = true;
	end
end

local offline_store = module:open_store("offline", "archive");

local refused_metric = module:metric("counter", "refused", "",
	"Messages refused because an account's storage allowance or offline store was full", {});

-- Input ----------------------------------------------------------------------------------------

-- [username] = { balance = bytes, at = time }, shared by the account's sessions.
local input_buckets = {};

local function input_refilled(bucket)
	local t = now();
	bucket.balance = m_min(input_burst, bucket.balance + (t - bucket.at) * input_rate);
	bucket.at = t;
end

-- What was read goes on; reading then stops until the account's bucket has paid for it. The
-- connection's own pausefor() resumes it, including data the socket library already buffered
-- (a plain pause()/resume() leaves that unread until more arrives).
local function throttle_input(bytes, session)
	local bucket = input_buckets[session.username];
	local conn = session.conn;
	if not (bucket and conn and conn.pausefor) then
		return bytes;
	end
	input_refilled(bucket);
	bucket.balance = bucket.balance - #bytes;
	if bucket.balance < 0 then
		session.log("debug", "Account over its input rate, pausing its connection");
		conn:pausefor(-bucket.balance / input_rate);
	end
	return bytes;
end

if input_rate > 0 then
	module:hook("authentication-success", function (event)
		local session = event.session;
		local username = session.username;
		-- BOSH requests come through connections Apache shares between sessions.
		if exempt[username] or not session.conn or session.bosh_version then
			return;
		end
		if not session.conn.pausefor then
			module:log("warn", "This network backend cannot pause a connection: no input limit");
			return;
		end
		if not input_buckets[username] then
			input_buckets[username] = { balance = input_burst, at = now() };
		end
		filters.add_filter(session, "bytes/in", throttle_input, 1000);
	end);
end

-- Stored messages ------------------------------------------------------------------------------

-- [username] = { copies, bytes, at, refusing }; an account without one has a full bucket.
local buckets = {};

local function refilled(bucket)
	local t = now();
	local elapsed = t - bucket.at;
	if elapsed > 0 then
		bucket.copies = m_min(burst_copies, bucket.copies + elapsed * copies_per_s);
		bucket.bytes = m_min(burst_bytes, bucket.bytes + elapsed * bytes_per_s);
		bucket.at = t;
	end
	return bucket;
end

local function charge(username, size)
	if not username or exempt[username] then
		return;
	end
	local bucket = buckets[username];
	if bucket then
		refilled(bucket);
	else
		bucket = { copies = burst_copies, bytes = burst_bytes, at = now() };
		buckets[username] = bucket;
	end
	-- May go below zero (a message stored in several places): the next one waits longer.
	bucket.copies = bucket.copies - 1;
	bucket.bytes = bucket.bytes - size;
end

-- Whether `username` may have one more copy of `size` bytes stored.
local function allows(username, size)
	local bucket = buckets[username];
	if not bucket then
		return size <= burst_bytes;
	end
	refilled(bucket);
	local ok = bucket.copies >= 1 and bucket.bytes >= size;
	if ok then
		bucket.refusing = nil;
	elseif not bucket.refusing then
		bucket.refusing = true;
		module:log("info", "%s@%s has spent its allowance of stored messages: refusing its"
			.. " messages until it refills", username, host);
	end
	return ok;
end

local function refuse(event, text)
	local origin, stanza = event.origin, event.stanza;
	refused_metric:with_labels():add(1);
	if stanza.attr.type ~= "error" then -- never answer an error with an error
		origin.send(st.error_reply(stanza, "wait", "resource-constraint", text));
	end
	return true;
end

local function would_go_offline(to)
	if full_sessions[to] then
		return false;
	end
	local user = bare_sessions[jid_bare(to)];
	return not (user and user.top_resources and #user.top_resources > 0);
end

local function offline_full(username)
	local _, total = offline_store:find(username, { limit = 0, total = true });
	-- Unknown (storage failing): let it pass; mod_offline will fail on its own.
	return total ~= nil and total >= offline_max;
end

-- Refuse what `recipient` (an account of this host) may not have stored.
local function check_recipient(event, recipient, size)
	if exempt[recipient] then
		return;
	end
	local stanza = event.stanza;
	if buckets[recipient] and not allows(recipient, size) then
		return refuse(event, "Too many messages were stored for this account lately;"
			.. " try again later");
	end
	local kind = stanza.attr.type or "normal";
	if (kind == "chat" or kind == "normal") and would_go_offline(stanza.attr.to)
	and offline_full(recipient) then
		return refuse(event, "This account's offline storage is full");
	end
end

-- A message from one of this host's accounts, before mod_mam (0) archives the sender's copy:
-- both the sender's and a local recipient's allowance are checked here, so a refused message
-- is not kept in the sender's archive either.
local function gate_sender(event)
	local origin, stanza = event.origin, event.stanza;
	local username = origin.username;
	if not username or exempt[username] then
		return;
	end
	local size = #tostring(stanza);
	if buckets[username] and not allows(username, size) then
		return refuse(event, "You have had too many messages stored lately; try again later");
	end
	local recipient, recipient_host = jid_split(stanza.attr.to);
	if recipient and recipient_host == host then
		return check_recipient(event, recipient, size);
	end
end

-- A message to one of this host's accounts from elsewhere (not a session of this host, which
-- went through gate_sender), before mod_mam (0), mod_archive_guard (-0.5) and mod_message (-1)
-- store or deliver it; after mod_collector_inbox (1000).
local function gate_recipient(event)
	local origin, stanza = event.origin, event.stanza;
	if origin.type == "c2s" and origin.host == host then
		return;
	end
	local recipient = jid_split(stanza.attr.to);
	if not recipient or not jid_split(stanza.attr.from or "") then
		return; -- to the host, or from a server or service (PubSub, errors)
	end
	return check_recipient(event, recipient, #tostring(stanza));
end

module:hook("pre-message/bare", gate_sender, 900);
module:hook("pre-message/full", gate_sender, 900);
module:hook("message/bare", gate_recipient, 900);
module:hook("message/full", gate_recipient, 900);

-- The sender's account when it is another ordinary account of this host.
local function local_sender(origin, owner)
	if origin and origin.type == "c2s" and origin.host == host and origin.username ~= owner then
		return origin.username;
	end
end

module:hook("archive-message-added", function (event)
	local owner = event.for_user;
	local size = #tostring(event.stanza);
	charge(owner, size);
	charge(local_sender(event.origin, owner), size);
end);

-- Before mod_offline (-1). Also reached without the gate above, by what a hibernating
-- session (XEP-0198) had queued when it ends: the archive already holds those.
module:hook("message/offline/handle", function (event)
	local owner = event.username;
	if not owner or exempt[owner] then
		return;
	end
	local origin, stanza = event.origin, event.stanza;
	if offline_full(owner) then
		module:log("debug", "Offline storage of %s@%s is full: not storing %s", owner, host,
			stanza:top_tag());
		if local_sender(origin, owner) then
			return refuse(event, "This account's offline storage is full");
		end
		refused_metric:with_labels():add(1);
		return true;
	end
	local size = #tostring(stanza);
	charge(owner, size);
	charge(local_sender(origin, owner), size);
end, 0);

module:add_timer(PRUNE_INTERVAL_S, function ()
	for username, bucket in pairs(buckets) do
		refilled(bucket);
		if bucket.copies >= burst_copies and bucket.bytes >= burst_bytes then
			buckets[username] = nil;
		end
	end
	for username, bucket in pairs(input_buckets) do
		input_refilled(bucket);
		if bucket.balance >= input_burst and not bare_sessions[username .. "@" .. host] then
			input_buckets[username] = nil;
		end
	end
	return PRUNE_INTERVAL_S;
end);
