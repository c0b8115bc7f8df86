-- Test harness module (tests/support/prosody.rs): sends outgoing server-to-server
-- connections for the domains in `test_s2s_routes` to a fixed address instead of
-- looking up DNS SRV records, so tests federate on loopback without touching DNS or
-- /etc/hosts.
--
--   test_s2s_routes = { ["remote.test"] = { "127.0.0.1", 15269 } }
--
-- It wraps net.resolvers.service.new, which mod_s2s calls for every new outgoing
-- connection ("xmpp-server", and "xmpps-server" for direct TLS): a routed domain gets
-- a resolver with the one address for "xmpp-server" and none for "xmpps-server"; any
-- other domain gets none at all (the server then bounces with
-- <remote-server-not-found/>), so a test never sends a DNS query off the machine.

local service = require "net.resolvers.service";
local basic = require "net.resolvers.basic";

local routes = module:get_option("test_s2s_routes", {});

local no_targets = { next = function(_, cb) cb(nil); end };
local no_targets_mt = { __index = no_targets };

if not service.test_s2s_routes_dns_new then
	service.test_s2s_routes_dns_new = service.new;
	service.new = function(hostname, service_name, conn_type, extra)
		local route = routes[hostname];
		if not route then
			module:log("debug", "no route for %s; not looking up DNS", hostname);
			return setmetatable({}, no_targets_mt);
		end
		if service_name == "xmpp-server" then
			module:log("debug", "routing %s to %s:%d", hostname, route[1], route[2]);
			return basic.new(route[1], route[2], conn_type, extra);
		end
		return setmetatable({}, no_targets_mt);
	end
end
