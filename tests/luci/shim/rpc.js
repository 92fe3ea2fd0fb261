'use strict';
'require baseclass';

/*
 * TEST SHIM of LuCI's rpc (luci-base rpc.js): declare() builds a function that POSTs one
 * ubus JSON-RPC call, {"jsonrpc":"2.0","id":N,"method":"call","params":[session, object,
 * method, args]}, to L.env.ubuspath (LuCI: /ubus or admin/ubus) and resolves the reply the
 * same way: result [0, data] -> data (narrowed by `expect`), a non-zero ubus status -> that
 * number (or a rejection with `reject: true`), a JSON-RPC error -> rejection. No batching.
 */

var requestId = 1;

function statusText(code) {
	return [ _('Command OK'), _('Invalid command'), _('Invalid argument'), _('Method not found'),
		_('Resource not found'), _('No data received'), _('Permission denied'),
		_('Request timeout'), _('Not supported'), _('Unspecified error'),
		_('Connection lost') ][code] || _('Unknown error code');
}

function call(object, method, params) {
	return fetch(L.env.ubuspath || '/ubus', {
		method: 'POST',
		headers: { 'Content-Type': 'application/json' },
		body: JSON.stringify({ jsonrpc: '2.0', id: requestId++, method: 'call',
			params: [ L.env.sessionid || '00000000000000000000000000000000', object, method, params ] })
	}).then(function(res) {
		if (!res.ok)
			L.raise('RPCError', 'RPC call to %s/%s failed with HTTP error %d', object, method, res.status);
		return res.json();
	});
}

function reply(options, msg) {
	var type = Object.prototype.toString, ret;

	if (!L.isObject(msg) || msg.jsonrpc != '2.0')
		L.raise('RPCError', 'RPC call to %s/%s returned invalid message frame', options.object, options.method);
	if (L.isObject(msg.error))
		L.raise('RPCError', 'RPC call to %s/%s failed with error %d: %s',
			options.object, options.method, msg.error.code, msg.error.message);
	if (options.reject && msg.result[0] !== 0)
		L.raise('RPCError', 'RPC call to %s/%s failed with ubus code %d: %s',
			options.object, options.method, msg.result[0], statusText(msg.result[0]));

	ret = msg.result.length > 1 ? msg.result[1] : msg.result[0];
	for (var key in (options.expect || {})) {
		if (ret != null && key != '')
			ret = ret[key];
		if (ret == null || type.call(ret) != type.call(options.expect[key]))
			ret = options.expect[key];
		break;
	}
	return ret;
}

return baseclass.extend({
	declare: function(options) {
		return function() {
			var params = {}, args = arguments;
			(options.params || []).forEach(function(name, i) { params[name] = args[i]; });
			return call(options.object, options.method, params).then(function(msg) {
				var ret = reply(options, msg);
				return typeof options.filter == 'function' ? options.filter(ret, params) : ret;
			});
		};
	},

	getStatusText: statusText,
	getSessionID: function() { return L.env.sessionid; },
	setSessionID: function(sid) { L.env.sessionid = sid; }
});
