-- Load globally, with c2s_require_encryption = true: every c2s client must start TLS before it
-- may authenticate (docs/contract/xmpp.md §7), except clients on a loopback address.
--
-- Prosody 0.12 requires encryption of all c2s clients or of none. Natively our own services
-- reach c2s on loopback, where nobody can listen in and TLS would only cost them; any other
-- address is a network. A plain c2s session from 127.0.0.0/8 or ::1 is marked secure before
-- mod_saslauth decides what to offer, so it is offered SCRAM at once; its STARTTLS offer loses
-- <required/>, and clients that take TLS whenever offered (most do) still get it. Later Prosody
-- versions do the same with their `secure_interfaces` option. BOSH sessions are left alone:
-- they arrive through Apache, and consider_bosh_secure already speaks for them.

local ip = require "util.ip";

local xmlns_starttls = "urn:ietf:params:xml:ns:xmpp-tls";
local loopback_v4 = ip.new_ip("127.0.0.0");
local loopback_v6 = ip.new_ip("::1");
-- A STARTTLS offer without <required/>, for the loopback sessions.
local optional_starttls = require "util.stanza".stanza("starttls", { xmlns = xmlns_starttls });

local function from_loopback(session)
	local address = session.ip and ip.new_ip(session.ip);
	if not address then
		return false;
	end
	-- match() also takes an IPv4-mapped IPv6 address (::ffff:127.0.0.1) for its IPv4 form.
	return ip.match(address, loopback_v4, 8) or ip.match(address, loopback_v6, 128);
end

module:hook("stream-features", function (event)
	local session = event.origin;
	-- secure == false means TLS is being negotiated; nil means a plain stream.
	if session.type ~= "c2s_unauthed" or session.secure ~= nil or session.bosh_wait ~= nil then
		return;
	end
	if from_loopback(session) then
		session.secure = true;
		session.loopback_plain = true;
		session.log("debug", "Loopback client: authentication offered without TLS");
	end
end, 2000);

module:hook("stream-features", function (event)
	local session, features = event.origin, event.features;
	if not session.loopback_plain or session.encrypted then
		return;
	end
	features:maptags(function (tag)
		if tag.name == "starttls" and tag.attr.xmlns == xmlns_starttls then
			return optional_starttls;
		end
		return tag;
	end);
end, -1000);

-- A loopback session that starts TLS is secured by TLS from then on (mod_c2s sets `encrypted`).
module:hook("stanza/" .. xmlns_starttls .. ":starttls", function (event)
	event.origin.loopback_plain = nil;
end, 1000);
