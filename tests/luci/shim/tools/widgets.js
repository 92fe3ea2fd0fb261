'use strict';
'require baseclass';
'require form';
'require uci';

/*
 * TEST SHIM of LuCI's tools.widgets: NetworkSelect as a text field that suggests the
 * logical interfaces of /etc/config/network (real LuCI lists them from network.js and,
 * with nocreate off, also accepts a typed name).
 */

var NetworkSelect = form.Value.extend({
	renderWidget: function(sid, value) {
		var input = form.Value.prototype.renderWidget.call(this, sid, value),
		    list = E('datalist', { 'id': 'networks-' + this.option });
		input.setAttribute('list', list.id);
		uci.load('network').then(function() {
			uci.sections('network', 'interface').forEach(function(s) {
				list.appendChild(E('option', { 'value': s['.name'] }));
			});
		}).catch(function() {});
		return E('span', {}, [ input, list ]);
	}
});

return baseclass.extend({ NetworkSelect: NetworkSelect });
