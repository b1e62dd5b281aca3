-- What the Yandex push server does once a client is logged in, for tests.
--
-- * After the session is open: the XEP-0092 version query (id "ask_version")
--   to the client's full JID, from the domain, as the vendor's page shows.
-- * XEP-0199 pings to the client every `yandex_ping_interval` seconds
--   (0: never), and one on demand: POST /yandex/ping.
-- * The subscription <iq type="set"><s xmlns="yandex:push:disk"/></iq> to
--   the client's own bare JID is answered with a result (or with the error
--   `yandex_subscription_error`, when set).
-- * Disk pushes on demand: POST /yandex/push with {"count": N} sends N
--   <iq type="set" from="login@domain" id="push-K"><query .../></iq> to
--   every subscribed session, at once, in order.
-- * For robustness tests: POST /yandex/unknown sends an IQ get in an unknown
--   namespace; POST /yandex/kick ends the sessions with a stream error
--   (see-other-host included).
-- * `yandex_resource_suffix` is appended to the resource the client asks
--   for, so the JID the server assigns differs from the one requested.
--
-- Everything the client sends (every top-level element, never a SASL
-- payload) and everything this module sends is appended to the JSON-lines
-- file `yandex_record_file`, one object a line, flushed at once; the tests
-- read that file.

module:depends("http");

local st = require "util.stanza";
local json = require "util.json";
local array = require "util.array";
local filters = require "util.filters";
local jid_bare = require "util.jid".bare;

local record_path = module:get_option_string("yandex_record_file");
assert(record_path, "yandex_record_file is required");
local ping_interval = module:get_option_number("yandex_ping_interval", 0);
local resource_suffix = module:get_option_string("yandex_resource_suffix", "");
local subscription_error = module:get_option_string("yandex_subscription_error");

local XMLNS_PUSH = "yandex:push:disk";
local XMLNS_VERSION = "jabber:iq:version";
local XMLNS_PING = "urn:xmpp:ping";
local XMLNS_STREAMS = "urn:ietf:params:xml:ns:xmpp-streams";
local VERSION_ID = "ask_version";

local record_file = assert(io.open(record_path, "a"));

local function record(entry)
	record_file:write(json.encode(entry), "\n");
	record_file:flush();
end

-- Sessions with an open session (after <session/>), and those subscribed,
-- by full JID.
local opened, subscribed = {}, {};
local ping_sequence, push_sequence, unknown_sequence = 0, 0, 0;

local function child_text(element, name)
	return element:get_child_text(name);
end

-- Record every element a client of this host sends, as Prosody parsed it.
local function record_incoming(stanza, session)
	if session.host ~= module.host or not st.is_stanza(stanza) then
		return stanza;
	end
	local attr = stanza.attr;
	local entry = {
		event = "in";
		name = stanza.name;
		xmlns = attr.xmlns;
		type = attr.type;
		id = attr.id;
		to = attr.to;
		from = session.full_jid;
	};
	if stanza.name == "auth" then
		entry.mechanism = attr.mechanism; -- the payload holds the token
	end
	local child = stanza.tags[1];
	if stanza.name == "iq" and child then
		entry.child = child.name;
		entry.child_xmlns = child.attr.xmlns;
		if child.attr.xmlns == XMLNS_VERSION then
			entry.version = {
				name = child_text(child, "name");
				version = child_text(child, "version");
				os = child_text(child, "os");
			};
		end
	end
	if stanza.name == "iq" and attr.type == "error" then
		local _, condition = stanza:get_error();
		entry.error = condition;
	end
	record(entry);
	return stanza;
end

local function add_filter(session)
	filters.add_filter(session, "stanzas/in", record_incoming, 1000);
end
filters.add_filter_hook(add_filter);

function module.unload()
	filters.remove_filter_hook(add_filter);
	record_file:close();
end

local function socket_info(session)
	local conn = session.conn;
	local sock = conn and conn:socket();
	local info = sock and sock.info and sock:info();
	return {
		port = conn and tonumber(conn:serverport());
		secure = session.secure and true or false;
		tls_protocol = type(info) == "table" and info.protocol or nil;
	};
end

-- One record per SASL outcome, with the connection's TLS facts.
local function record_auth(event, result)
	local session = event.session;
	local entry = socket_info(session);
	entry.event = "auth";
	entry.result = result;
	entry.mechanism = session.sasl_handler and session.sasl_handler.selected;
	if result == "success" then
		entry.username = session.username;
	else
		entry.condition = event.condition;
	end
	record(entry);
end

module:hook("authentication-success", function (event)
	record_auth(event, "success");
end);

module:hook("authentication-failure", function (event)
	record_auth(event, "failure");
end);

module:hook("pre-resource-bind", function (event)
	if resource_suffix ~= "" and event.resource and event.resource ~= "" then
		event.resource = event.resource .. resource_suffix;
	end
end);

module:hook("resource-bind", function (event)
	record({ event = "bound"; jid = event.session.full_jid });
end);

module:hook("resource-unbind", function (event)
	local full_jid = event.session.full_jid;
	if full_jid then
		opened[full_jid], subscribed[full_jid] = nil, nil;
	end
end);

module:hook("pre-session-close", function (event)
	local session = event.session;
	if not session.type or not session.type:match("^c2s") then
		return;
	end
	local reason = event.reason;
	local by = reason == false and "client" or "server";
	if type(reason) == "table" then
		reason = reason.condition or reason.text;
	elseif st.is_stanza(reason) then
		reason = reason.name;
	end
	record({
		event = "closed";
		by = by;
		jid = session.full_jid;
		reason = type(reason) == "string" and reason or nil;
	});
end);

local function send_ping(session)
	ping_sequence = ping_sequence + 1;
	local id = "ping_" .. ping_sequence;
	session.send(st.iq({ type = "get", from = module.host, to = session.full_jid, id = id })
		:tag("ping", { xmlns = XMLNS_PING }));
	record({ event = "sent"; kind = "ping"; id = id; to = session.full_jid });
	return id;
end

local function start_pings(session)
	if ping_interval <= 0 then
		return;
	end
	module:add_timer(ping_interval, function ()
		if opened[session.full_jid] ~= session then
			return; -- gone: stop the timer
		end
		send_ping(session);
		return ping_interval;
	end);
end

-- Answer <session/>, then ask for the version (the vendor's step 9).
local function session_opened(event)
	local session = event.origin;
	session.send(st.reply(event.stanza));
	opened[session.full_jid] = session;
	record({ event = "session"; jid = session.full_jid });
	session.send(st.iq({ type = "get", from = module.host, to = session.full_jid, id = VERSION_ID })
		:tag("query", { xmlns = XMLNS_VERSION }));
	record({ event = "sent"; kind = "version"; id = VERSION_ID; to = session.full_jid });
	start_pings(session);
	return true;
end
-- Above mod_saslauth's own handler (priority 0), which only replies.
module:hook("iq/self/urn:ietf:params:xml:ns:xmpp-session:session", session_opened, 10);
module:hook("iq/host/urn:ietf:params:xml:ns:xmpp-session:session", session_opened, 10);

module:hook("iq-set/bare/" .. XMLNS_PUSH .. ":s", function (event)
	local session, stanza = event.origin, event.stanza;
	if not event.to_self then
		session.send(st.error_reply(stanza, "auth", "forbidden"));
		return true;
	end
	local reply;
	if subscription_error then
		reply = st.error_reply(stanza, "cancel", subscription_error);
	else
		reply = st.reply(stanza);
		subscribed[session.full_jid] = session;
	end
	-- The router removed `to` (the sender's own bare JID); answer from it.
	reply.attr.from = jid_bare(session.full_jid);
	session.send(reply);
	record({
		event = "subscription";
		jid = session.full_jid;
		id = stanza.attr.id;
		result = subscription_error or "result";
	});
	return true;
end);

-- One Disk change, shaped like the vendor's: attributes and a child element,
-- with text that needs escaping and non-ASCII characters.
local function send_push(session)
	push_sequence = push_sequence + 1;
	local n = tostring(push_sequence);
	local id = "push-" .. n;
	session.send(st.iq({ type = "set", from = jid_bare(session.full_jid), to = session.full_jid, id = id })
		:tag("query", {
			xmlns = XMLNS_PUSH;
			t = "diff";
			uid = "1130000000000001";
			old = tostring(push_sequence - 1);
			new = n;
		})
			:tag("op", {
				type = "new";
				key = "/disk/Отчёт & план " .. n .. ".txt";
				resource_type = "file";
				size = n;
			}):up()
		:up());
	record({ event = "sent"; kind = "push"; id = id; to = session.full_jid });
	return id;
end

local function json_body(event)
	local body = event.request.body;
	local request = body and body ~= "" and json.decode(body) or {};
	return type(request) == "table" and request or {};
end

local function matching(sessions, request)
	local found = array();
	for _, session in pairs(sessions) do
		if not request.login or session.username == request.login then
			found:push(session);
		end
	end
	return found;
end

local function json_response(event, ids)
	event.response.headers.content_type = "application/json";
	if #ids == 0 then
		event.response.status_code = 409;
		return json.encode({ error = "no matching session"; ids = ids });
	end
	return json.encode({ ids = ids });
end

module:provides("http", {
	name = "yandex";
	route = {
		["POST /push"] = function (event)
			local request = json_body(event);
			local count = tonumber(request.count) or 1;
			local ids = array();
			for _, session in ipairs(matching(subscribed, request)) do
				for _ = 1, count do
					ids:push(send_push(session));
				end
			end
			return json_response(event, ids);
		end;
		-- An IQ get in a namespace no client knows: it must be refused.
		["POST /unknown"] = function (event)
			local ids = array();
			for _, session in ipairs(matching(opened, json_body(event))) do
				unknown_sequence = unknown_sequence + 1;
				local id = "unknown_" .. unknown_sequence;
				session.send(st.iq({ type = "get", from = module.host, to = session.full_jid, id = id })
					:tag("query", { xmlns = "urn:example:unknown" }));
				record({ event = "sent"; kind = "unknown"; id = id; to = session.full_jid });
				ids:push(id);
			end
			return json_response(event, ids);
		end;
		-- End the sessions with a stream error, as a server restart would;
		-- {"condition": "see-other-host", "content": "host:port"} redirects.
		["POST /kick"] = function (event)
			local request = json_body(event);
			local condition = request.condition or "system-shutdown";
			local ids = array();
			for _, session in ipairs(matching(opened, request)) do
				ids:push(session.full_jid);
				record({ event = "sent"; kind = "kick"; to = session.full_jid; condition = condition });
				local stream_error = st.stanza("stream:error")
					:tag(condition, { xmlns = XMLNS_STREAMS }):text(request.content):up()
					:tag("text", { xmlns = XMLNS_STREAMS }):text("Kicked by the test"):up();
				session:close(stream_error);
			end
			return json_response(event, ids);
		end;
		["POST /ping"] = function (event)
			local ids = array();
			for _, session in ipairs(matching(opened, json_body(event))) do
				ids:push(send_ping(session));
			end
			return json_response(event, ids);
		end;
	};
});
