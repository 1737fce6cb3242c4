-- RoadWatch's Prosody 0.12 (docs/contract/xmpp.md §1), used unchanged by the native runner and the
-- container. Everything that differs between the two comes from ROADWATCH_* environment variables.

local function env(name, default)
	local value = os.getenv(name)
	if value == nil or value == "" then
		return default
	end
	return value
end

local function env_number(name, default)
	return tonumber(env(name, tostring(default))) or default
end

local domain = env("ROADWATCH_XMPP_DOMAIN", "roadwatch.local")
local anonymous_domain = "anon." .. domain
local pubsub_domain = "pubsub." .. domain
-- 127.0.0.1 natively; "*" in a container, where other containers connect over the network.
local interface = env("ROADWATCH_PROSODY_INTERFACE", "127.0.0.1")
-- c2s may listen wider than BOSH (ROADWATCH_XMPP_BIND): clients from outside use it with TLS.
local c2s_interface = env("ROADWATCH_XMPP_BIND", interface)
local data_dir = env("ROADWATCH_PROSODY_DATA_DIR", "/var/lib/prosody")
local config_dir = CFG_CONFIGDIR or "."

-- Process --------------------------------------------------------------------------------------

-- Without systemd Prosody needs its own pidfile (docs/STACK-NOTES.md §6); it always runs as the
-- prosody user.
pidfile = env("ROADWATCH_PROSODY_PIDFILE", data_dir .. "/prosody.pid")
data_path = data_dir
-- The server certificate of c2s (runner/tls.py: a local CA's, or the operator's own): this
-- server's own copy of the key, readable by the prosody user alone.
local tls_dir = env("ROADWATCH_PROSODY_TLS_DIR", data_dir)
certificates = tls_dir
ssl = {
	certificate = tls_dir .. "/server.crt",
	key = tls_dir .. "/server.key",
}
plugin_paths = { env("ROADWATCH_PROSODY_MODULES_DIR", config_dir .. "/modules") }
-- The runner and the container both collect standard output as the log.
log = {
	{ levels = { min = env("ROADWATCH_PROSODY_LOG_LEVEL", "info") }, to = "console" },
}

-- Network --------------------------------------------------------------------------------------

c2s_ports = { env_number("ROADWATCH_XMPP_PORT", 5222) }
c2s_interfaces = { c2s_interface }
http_ports = { env_number("ROADWATCH_BOSH_PORT", 5280) }
http_interfaces = { interface }
https_ports = {}
-- No federation (docs/contract/xmpp.md §1) and no external components: open no listener for them.
s2s_ports = {}
component_ports = {}
-- Nagle's algorithm adds milliseconds to every event (docs/STACK-NOTES.md §3): send small stanzas
-- at once.
network_settings = { nagle = false }

-- c2s offers STARTTLS to every client and requires it from all but loopback ones
-- (mod_c2s_loopback: our own services on this machine), before any authentication. SCRAM only:
-- PLAIN would hand the password itself to the server, TLS or not.
c2s_require_encryption = true
disable_sasl_mechanisms = { "PLAIN", "DIGEST-MD5" }
allow_unencrypted_plain_auth = false
-- Apache terminates the browser's connection and proxies /http-bind here (docs/STACK-NOTES.md §7).
consider_bosh_secure = true
http_default_host = domain
allow_registration = false

-- Modules --------------------------------------------------------------------------------------

modules_enabled = {
	"roster",
	"saslauth",
	"disco",
	"ping",
	"bosh",
	"smacks", -- XEP-0198: the gateway's one long-lived session survives short breaks
	"mam", -- XEP-0313: the collector catches up from its archive after a restart
	"offline",
	"tls", -- STARTTLS on c2s (docs/contract/xmpp.md §7)
	-- deploy/prosody/modules: loopback clients may skip STARTTLS, nobody else; PubSub
	-- notifications reach people's clients as a line of text too (with the PubSub component).
	"c2s_loopback",
	"pubsub_summary",
	-- `roadwatch accounts rotate|remove` act through the running server, which ends the
	-- account's open sessions; the socket sits in the data folder, the prosody user's alone.
	"admin_shell",
	"admin_socket",
}
modules_disabled = { "s2s" }
pubsub_summary_people_host = domain
pubsub_summary_pubsub_host = pubsub_domain

-- A crashed client's session keeps its stanzas this long before they go to offline storage
-- (Prosody's default is 600 s); the collector also replays its archive on every login.
smacks_hibernation_time = env_number("ROADWATCH_PROSODY_SMACKS_HIBERNATION_S", 10)
smacks_max_queue_size = 2000

-- XEP-0313: archive every message with a body; the gateway turns archiving off for its own
-- account (MAM preferences), so only what reaches collector@ is kept.
default_archive_policy = true
archive_expires_after = env("ROADWATCH_PROSODY_ARCHIVE_EXPIRES", "1w")
max_archive_query_results = 500

-- Storage: users, archive, offline messages and PubSub items in MySQL (docs/contract/storage.md §9)

default_storage = "sql"
storage = {
	-- Read for every archived message, with three SQL round trips on Prosody's only thread:
	-- kept in memory instead. The only preference set is the gateway's "never", which it sets
	-- again at the start of every session, and so after any restart of Prosody.
	archive_prefs = "memory",
}
sql = {
	driver = "MySQL",
	host = env("ROADWATCH_MYSQL_HOST", "127.0.0.1"),
	port = env_number("ROADWATCH_MYSQL_PORT", 3306),
	database = env("ROADWATCH_PROSODY_DB_NAME", "prosody"),
	username = env("ROADWATCH_PROSODY_DB_USER", "prosody"),
	password = env("ROADWATCH_PROSODY_DB_PASSWORD", ""),
}
sql_manage_tables = true

-- Hosts ----------------------------------------------------------------------------------------

-- The service accounts gateway@ and collector@ (docs/contract/xmpp.md §2), created by the runner
-- with prosodyctl.
VirtualHost(domain)
	authentication = "internal_hashed"
	-- deploy/prosody/modules: a message whose archive write fails (MySQL down) is spooled on
	-- local disk and archived once MySQL answers, instead of being bounced and lost; the
	-- collector reads the figures (docs/DESIGN.md, "Collector: PubSub retries, archive
	-- write failures, figures").
	-- deploy/prosody/modules: no account of this host logs in over BOSH (browsers only, and
	-- they are anonymous on their own host); only gateway@ sends messages to collector@, so no
	-- other account fills its archive.
	-- deploy/prosody/modules: every other account's input rate and the messages stored for it
	-- are bounded (docs/DESIGN.md, "XMPP"); the service accounts carry the whole event flow
	-- and are exempt.
	modules_enabled = { "archive_guard", "bosh_fence", "collector_inbox", "account_limits" }
	archive_guard_readers = { "collector@" .. domain }
	collector_inbox_owner = "collector@" .. domain
	collector_inbox_sender = "gateway@" .. domain
	account_limits_exempt = { "gateway@" .. domain, "collector@" .. domain }
	-- Bytes/s read from an account's connections, after a burst of 2 s; 0 turns it off.
	account_limits_input_rate = env_number("ROADWATCH_PROSODY_INPUT_RATE", 10240)
	-- Copies an account may have stored (archive and offline) at once, then per day.
	account_limits_burst_messages = env_number("ROADWATCH_PROSODY_STORED_BURST", 300)
	account_limits_daily_messages = env_number("ROADWATCH_PROSODY_STORED_PER_DAY", 1000)
	account_limits_burst_bytes = env_number("ROADWATCH_PROSODY_STORED_BURST_BYTES", 1048576)
	account_limits_daily_bytes = env_number("ROADWATCH_PROSODY_STORED_BYTES_PER_DAY", 4194304)
	-- Offline messages never expire: an account holds at most this many.
	account_limits_offline_messages = env_number("ROADWATCH_PROSODY_OFFLINE_MAX", 100)

-- Browsers log in anonymously over BOSH; nothing of theirs is worth keeping on disk.
VirtualHost(anonymous_domain)
	authentication = "anonymous"
	storage = "memory"
	modules_disabled = { "mam", "offline" }
	-- deploy/prosody/modules: browsers may reach PubSub and each other, never gateway@ or
	-- collector@, and their PubSub subscriptions end with their session.
	modules_enabled = { "anonymous_fence" }
	anonymous_fence_protected_host = domain
	anonymous_fence_pubsub_host = pubsub_domain

-- One node per kind of event (docs/contract/xmpp.md §5). The collector administers the service and
-- so owns the nodes; every other user, anonymous ones included, gets the "open" access model's
-- member rights: read items and subscribe, never create or publish.
Component(pubsub_domain) "pubsub"
	name = "RoadWatch events"
	admins = { "collector@" .. domain }
	-- A node's items are the current state of its events: keep enough of them.
	pubsub_max_items = env_number("ROADWATCH_PUBSUB_MAX_ITEMS", 1000)
	-- deploy/prosody/modules: items are served from memory and written to MySQL in batches,
	-- instead of four statements per item on Prosody's only thread (bench/pubsub.py); people's
	-- subscriptions get each event as a line of text too, which any client shows.
	modules_enabled = { "pubsub_batched_items", "pubsub_summary" }
