'use strict';
'require baseclass';
'require rpc';

/*
 * TEST SHIM of LuCI's uci: load() reads a whole config with ubus `uci get`, set()/unset()
 * stage changes locally, save() sends them as `uci set` / `uci delete` (as LuCI does) and
 * apply() sends `uci apply`, after which the router's procd runs the reload triggers.
 */

var callGet = rpc.declare({ object: 'uci', method: 'get', params: [ 'config' ], expect: { values: {} } }),
    callSet = rpc.declare({ object: 'uci', method: 'set', params: [ 'config', 'section', 'values' ], reject: true }),
    callDelete = rpc.declare({ object: 'uci', method: 'delete', params: [ 'config', 'section', 'options' ], reject: true }),
    callApply = rpc.declare({ object: 'uci', method: 'apply', params: [ 'timeout', 'rollback' ], reject: true });

return baseclass.extend({
	__init__: function() {
		this.state = { values: {}, changes: {}, deletes: {} };
	},

	load: function(config) {
		var st = this.state;
		return callGet(config).then(function(values) {
			st.values[config] = values;
			return config;
		});
	},

	sections: function(config, type) {
		var v = this.state.values[config] || {};
		return Object.keys(v).map(function(k) { return v[k]; })
			.filter(function(s) { return !type || s['.type'] == type; });
	},

	get: function(config, sid, option) {
		var c = this.state.changes[config], d = this.state.deletes[config];
		if (c && c[sid] && option in c[sid])
			return c[sid][option];
		if (d && d[sid] && d[sid].indexOf(option) >= 0)
			return null;
		var s = (this.state.values[config] || {})[sid];
		return s ? (option == null ? s : s[option]) : null;
	},

	set: function(config, sid, option, value) {
		var c = this.state.changes[config] = this.state.changes[config] || {};
		(c[sid] = c[sid] || {})[option] = value;
	},

	unset: function(config, sid, option) {
		var d = this.state.deletes[config] = this.state.deletes[config] || {};
		(d[sid] = d[sid] || []).push(option);
		if (this.state.changes[config] && this.state.changes[config][sid])
			delete this.state.changes[config][sid][option];
	},

	save: function() {
		var st = this.state, tasks = [];
		Object.keys(st.changes).forEach(function(config) {
			Object.keys(st.changes[config]).forEach(function(sid) {
				if (Object.keys(st.changes[config][sid]).length)
					tasks.push(callSet(config, sid, st.changes[config][sid]));
			});
		});
		Object.keys(st.deletes).forEach(function(config) {
			Object.keys(st.deletes[config]).forEach(function(sid) {
				tasks.push(callDelete(config, sid, st.deletes[config][sid]));
			});
		});
		var configs = Object.keys(st.changes).concat(Object.keys(st.deletes));
		st.changes = {};
		st.deletes = {};
		return Promise.all(tasks).then(L.bind(function() {
			return Promise.all(configs.map(L.bind(this.load, this)));
		}, this));
	},

	apply: function(timeout) {
		return callApply(timeout, !!timeout);
	}
});
