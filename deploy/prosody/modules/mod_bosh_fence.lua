-- Load on the services' host (docs/contract/xmpp.md §2): its accounts (gateway@, collector@,
-- people's own) never log in over BOSH.
--
-- BOSH is the browsers' way in, through Apache, and browsers log in anonymously on their own
-- host. A BOSH session to this host is offered no stream features (no SASL mechanism, so no
-- password is ever sent over it) and any authentication it tries anyway is refused.

local st = require "util.stanza";

local xmlns_sasl = "urn:ietf:params:xml:ns:xmpp-sasl";

-- mod_bosh gives every session it creates a `bosh_wait`; c2s sessions have none.
local function over_bosh(session)
	return session.bosh_wait ~= nil;
end

module:hook("stream-features", function (event)
	if over_bosh(event.origin) then
		return true; -- before mod_saslauth: nothing offered
	end
end, 1000);

module:hook("stanza/" .. xmlns_sasl .. ":auth", function (event)
	local session = event.origin;
	if not over_bosh(session) then
		return;
	end
	session.log("warn", "Refused a login to %s over BOSH", module.host);
	session.send(st.stanza("failure", { xmlns = xmlns_sasl }):tag("not-authorized"):up()
		:tag("text"):text("Accounts of this host log in over c2s, not BOSH"));
	return true;
end, 1000);
