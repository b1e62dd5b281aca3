-- Writes the ports Prosody actually listens on to `report_ports_file`.
--
-- The tests configure every listener with port 0 (each on its own loopback
-- address, since Prosody refuses two services on one address and port 0),
-- so the kernel picks free ports; once the server has started, this module
-- writes {"<service>": [{"interface": ..., "port": ...}], ...} as JSON.
-- The file is written under a temporary name and renamed, so a reader sees
-- either no file or the whole of it.

module:set_global();

local portmanager = require "core.portmanager";
local json = require "util.json";
local array = require "util.array";

local path = module:get_option_string("report_ports_file");
assert(path, "report_ports_file is required");

local function report()
	local services = {};
	for name, interface, _, _, active in portmanager.get_active_services():iter(nil, nil, nil, nil) do
		local _, port = active.server:socket():getsockname();
		services[name] = services[name] or array();
		services[name]:push({ interface = interface; port = tonumber(port) });
	end
	local partial = path .. ".partial";
	local file = assert(io.open(partial, "w"));
	file:write(json.encode(services));
	file:close();
	assert(os.rename(partial, path));
	module:log("info", "Listening ports written to %s", path);
end

module:hook("server-started", report);
