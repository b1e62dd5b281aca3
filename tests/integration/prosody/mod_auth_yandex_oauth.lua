-- Authentication provider for the yadiskpush tests: X-YANDEX-OAUTH only.
--
-- The SASL payload is "login NUL token" (the vendor's page, step 5); the
-- token is checked against the table `yandex_oauth_tokens` in the config,
-- login -> token. A wrong or missing token fails with `not-authorized`.
--
-- Prosody offers a mechanism only if the authentication provider in use
-- builds the SASL handler with it, so this module is both the provider
-- (`authentication = "yandex_oauth"`) and the mechanism's registration.

local sasl = require "util.sasl";
local nodeprep = require "util.encodings".stringprep.nodeprep;

local MECHANISM = "X-YANDEX-OAUTH";
local BACKEND = "yandex_oauth";

local tokens = module:get_option("yandex_oauth_tokens", {});

-- The mechanism itself: one message, no challenge.
local function yandex_oauth(self, message)
	if not message or message == "" then
		return "failure", "malformed-request", "Expected login NUL token";
	end
	local login, token = message:match("^([^%z]+)%z([^%z]+)$");
	if not login then
		return "failure", "malformed-request", "Expected login NUL token";
	end
	login = nodeprep(login);
	if not login or login == "" then
		return "failure", "malformed-request", "Invalid login";
	end
	if not self.profile[BACKEND](self, login, token) then
		return "failure", "not-authorized", "Invalid OAuth token";
	end
	self.username = login;
	return "success";
end

-- util.sasl keeps one registry per process; registering again on a reload
-- only repeats the name in a list that becomes a set.
sasl.registerMechanism(MECHANISM, { BACKEND }, yandex_oauth);

local provider = { name = "yandex_oauth" };

function provider.test_password(login, token)
	return tokens[login] ~= nil and tokens[login] == token;
end

function provider.user_exists(login)
	return tokens[login] ~= nil;
end

function provider.users()
	return next, tokens, nil;
end

function provider.get_password()
	return nil, "Tokens are not passwords";
end

function provider.set_password()
	return nil, "Tokens are set in the config";
end

function provider.create_user()
	return nil, "Accounts are set in the config";
end

function provider.delete_user()
	return nil, "Accounts are set in the config";
end

function provider.get_sasl_handler()
	return sasl.new(module.host, {
		[BACKEND] = function(_, login, token)
			return provider.test_password(login, token);
		end;
	});
end

module:provides("auth", provider);
