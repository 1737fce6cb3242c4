-- Notifications readable in any XMPP client. Load on the PubSub component and on the host of
-- people's accounts.
--
-- An item holds the event as XEP-0335 JSON, which ordinary clients (Gajim, Conversations,
-- profanity) do not show, and most show nothing of a PubSub notification at all. On the
-- component: mod_pubsub adds a <body> to a notification when the subscription asks for it
-- (pubsub#include_body, XEP-0060 §12.2) and a summary exists for the payload's namespace; this
-- module gives that summary, the same one-line text the gateway writes for the collector
-- (Event.summary() in src/roadwatch/domain/events.py), and a subscription made by an account of
-- `pubsub_summary_people_host` that states no options asks for it. Browsers (anonymous, on
-- their own host) and anyone who says otherwise get the payload alone.
-- On the people's host: such a notification reaches the account as two headlines, the PubSub
-- event for clients that read it and the line of text alone, which clients show.

local json = require "util.json";

local xmlns_pubsub = "http://jabber.org/protocol/pubsub";
local xmlns_json = "urn:xmpp:json:0";
local people_host = module:get_option_string("pubsub_summary_people_host");

local function text_of(value)
	if type(value) == "string" or type(value) == "number" then
		return tostring(value);
	end
end

-- Mirrors Event.summary(): "[active] accident at 49.25360,4.03400, 2 station(s) (v1, <time>)".
local function summary(event)
	local lat, lon = tonumber(event.lat), tonumber(event.lon);
	local kind, status = text_of(event.type), text_of(event.status);
	if not (lat and lon and kind and status) then
		return nil;
	end
	local zone = "";
	if event.zone_id ~= nil and event.zone_id ~= json.null then
		local name = event.zone_name ~= json.null and text_of(event.zone_name) or nil;
		zone = " zone " .. (name or text_of(event.zone_id) or "");
	end
	local stations = "";
	if type(event.station_ids) == "table" and #event.station_ids > 0 then
		stations = (", %d station(s)"):format(#event.station_ids);
	end
	return ("[%s] %s%s at %.5f,%.5f%s (v%s, %s)"):format(
		status, (kind:gsub("_", " ")), zone, lat, lon, stations,
		text_of(event.version) or "?", text_of(event.updated_at) or "?");
end

if module:get_host_type() == "component" then

	module:hook("pubsub-summary/" .. xmlns_json, function (event)
		local ok, decoded = pcall(json.decode, event.payload:get_text() or "");
		if ok and type(decoded) == "table" then
			return summary(decoded);
		end
	end);

	-- A subscription without options from a person's account asks for the body (before
	-- mod_pubsub handles it).
	module:hook("iq/host/" .. xmlns_pubsub .. ":pubsub", function (event)
		local stanza = event.stanza;
		if stanza.attr.type ~= "set" then
			return;
		end
		local pubsub = stanza.tags[1];
		local subscribe = pubsub:get_child("subscribe");
		if not subscribe or pubsub:get_child("options") or not people_host then
			return;
		end
		local _, from_host = (stanza.attr.from or ""):match("^([^@/]+)@([^/]+)");
		if from_host ~= people_host then
			return;
		end
		pubsub:tag("options", { node = subscribe.attr.node, jid = subscribe.attr.jid })
			:tag("x", { xmlns = "jabber:x:data", type = "submit" })
				:tag("field", { var = "FORM_TYPE", type = "hidden" })
					:text_tag("value", xmlns_pubsub .. "#subscribe_options"):up()
				:tag("field", { var = "pubsub#include_body" })
					:text_tag("value", "1"):up()
			:up():up();
		pubsub:reset();
	end, 10);

else

	local st = require "util.stanza";
	local new_id = require "util.id".medium;
	local xmlns_event = xmlns_pubsub .. "#event";
	local pubsub_host = module:get_option_string("pubsub_summary_pubsub_host");

	-- Before mod_message delivers the notification to the account's resources.
	module:hook("message/bare", function (event)
		local stanza = event.stanza;
		if stanza.attr.type ~= "headline" or stanza.attr.from ~= pubsub_host
			or not stanza:get_child("event", xmlns_event) then
			return;
		end
		local text = stanza:get_child_text("body");
		if not text then
			return;
		end
		stanza:remove_children("body");
		module:send(st.message({ to = stanza.attr.to, from = pubsub_host, type = "headline",
			id = new_id() }):text_tag("body", text));
	end, 10);

end
