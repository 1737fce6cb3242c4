-- Load on the anonymous (browser) host only (docs/contract/xmpp.md §2, §6).
--
-- 1. Anonymous sessions may talk to their own host, to the PubSub service and to the servers
--    themselves, but not to any account of the protected host (gateway@, collector@): such
--    stanzas are refused with <not-allowed/>, so a browser cannot feed fake events to the
--    collector. PubSub itself refuses their publishing through its affiliations.
-- 2. An anonymous JID never comes back, so its PubSub subscriptions are removed when its session
--    ends; otherwise every closed browser tab would stay a subscriber forever.

local jid_split = require "util.jid".split;
local jid_bare = require "util.jid".bare;
local st = require "util.stanza";

local protected_host = module:get_option_string("anonymous_fence_protected_host");
local pubsub_host = module:get_option_string("anonymous_fence_pubsub_host");

if not protected_host then
	module:log("error", "anonymous_fence_protected_host is not set: nothing is fenced");
	return;
end

module:hook("pre-stanza", function (event)
	local origin, stanza = event.origin, event.stanza;
	local node, host = jid_split(stanza.attr.to);
	if node == nil or host ~= protected_host then
		return; -- not an account of the protected host
	end
	module:log("debug", "Refusing %s from %s to %s", stanza.name, origin.full_jid, stanza.attr.to);
	local kind = stanza.attr.type;
	-- Never answer errors or results (XMPP core forbids it), nor presence (nothing to tell).
	if stanza.name ~= "presence" and kind ~= "error" and kind ~= "result" then
		origin.send(st.error_reply(stanza, "cancel", "not-allowed",
			"Anonymous sessions cannot address this account"));
	end
	return true;
end, 1000);

local function pubsub_service()
	local host = pubsub_host and prosody.hosts[pubsub_host];
	local pubsub = host and host.modules and host.modules.pubsub;
	return pubsub and pubsub.service;
end

module:hook("resource-unbind", function (event)
	local session = event.session;
	local service = pubsub_service();
	if not service or not session.full_jid then
		return;
	end
	-- Subscriptions are indexed by bare JID and cover both full and bare subscribers (XEP-0060
	-- §6.1 lets a client subscribe with either).
	local ok, subscriptions = service:get_subscriptions(nil, true, jid_bare(session.full_jid));
	if not ok then
		return;
	end
	for _, subscription in ipairs(subscriptions) do
		service:remove_subscription(subscription.node, true, subscription.jid);
	end
end);
