-- Load on the services' host (docs/contract/xmpp.md §2): only the gateway sends messages to the
-- collector.
--
-- The collector already ignores events from anyone else, but Prosody would first store each
-- such message in the collector's archive, kept a week: any account could fill it (22 MB in
-- 10 s was measured). Messages to the collector from anyone but the gateway's account are
-- refused with <not-allowed/> before the archive or the collector sees them.

local jid_bare = require "util.jid".bare;
local jid_split = require "util.jid".split;
local st = require "util.stanza";

local collector = module:get_option_string("collector_inbox_owner");
local gateway = module:get_option_string("collector_inbox_sender");

if not (collector and gateway) then
	module:log("error", "collector_inbox_owner or collector_inbox_sender is not set: no fence");
	return;
end

local function fence(event)
	local origin, stanza = event.origin, event.stanza;
	if jid_bare(stanza.attr.to) ~= collector then
		return;
	end
	local sender = jid_bare(stanza.attr.from or "");
	local node = jid_split(stanza.attr.from or "");
	if sender == gateway or node == nil then
		return; -- the gateway, or a server or service (PubSub, errors, notices)
	end
	module:log("debug", "Refusing a message to %s from %s", collector, sender);
	if stanza.attr.type ~= "error" then
		origin.send(st.error_reply(stanza, "cancel", "not-allowed",
			"Only the gateway sends messages to the collector"));
	end
	return true;
end

-- Before mod_mam (priority 0) archives it and before delivery.
module:hook("message/bare", fence, 1000);
module:hook("message/full", fence, 1000);
