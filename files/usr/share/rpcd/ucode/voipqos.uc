'use strict';
/*
 * rpcd ucode plugin: publishes the public ubus object `voipqos` and forwards each call to
 * the daemon's own object `voipqos.daemon` (python-ubus). Why (docs/design.md, ubus):
 * python-ubus makes every declared argument required and rejects any other, so one
 * python-ubus signature cannot serve both `ubus call voipqos flows` (no `all`) and uhttpd,
 * which adds `ubus_rpc_session` to every call. rpcd's plugins take declared arguments as
 * optional and accept `ubus_rpc_session`; here the defaults are filled in, the session is
 * dropped, and the daemon's answer (or its error status and message) is passed back.
 * The call is asynchronous: rpcd's loop is not blocked while the daemon answers.
 */

let ubus = require('ubus').connect();

const DAEMON = 'voipqos.daemon';

// method -> arguments with their defaults (the value's type is the argument's blobmsg
// type, as rpcd infers it); must match voipqos.api.SPECS (tests/test_ubus.py checks)
const METHODS = {
	"status": {},
	"flows": { "all": false },
	"check": {},
	"set_mode": { "mode": "", "expires": 0 },
	"reload": {}
};

function forward(method, defaults) {
	return {
		args: defaults,
		call: function(req) {
			let args = {};

			for (let name, value in defaults)
				args[name] = exists(req.args, name) ? req.args[name] : value;

			let deferred = ubus.defer(DAEMON, method, args, function(code, reply) {
				if (code == 0)
					return req.reply(reply);

				/* the daemon answers a refusal as { error, status } with ubus status 9:
				 * python-ubus cannot choose the status itself; the reply keeps both
				 * (rpc.js hands a view the data, not the status) */
				let status = (type(reply?.status) == 'int') ? reply.status : code;

				req.reply(reply?.error ? { error: reply.error, status } : null, status);
			});

			if (deferred == null)
				return req.reply({ error: 'the voipqos daemon is not running',
					status: UBUS_STATUS_NOT_FOUND }, UBUS_STATUS_NOT_FOUND);

			return deferred;
		}
	};
}

let object = {};

for (let method, defaults in METHODS)
	object[method] = forward(method, defaults);

return { voipqos: object };
