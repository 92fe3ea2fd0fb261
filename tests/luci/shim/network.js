'use strict';
'require baseclass';
'require uci';

/*
 * TEST SHIM of LuCI's network.js: getNetworks() lists the interface sections of
 * /etc/config/network, getDevices() the device names they use (real LuCI asks netifd
 * and the kernel). Objects answer getName() only.
 */

function named(name) {
	return { getName: function() { return name; } };
}

function interfaces() {
	return uci.load('network').then(function() {
		return uci.sections('network', 'interface');
	}).catch(function() { return []; });
}

return baseclass.extend({
	getNetworks: function() {
		return interfaces().then(function(s) { return s.map(function(i) { return named(i['.name']); }); });
	},

	getDevices: function() {
		return interfaces().then(function(s) {
			return s.map(function(i) { return i.device; }).filter(function(d, n, all) {
				return d && all.indexOf(d) == n;
			}).map(named);
		});
	}
});
