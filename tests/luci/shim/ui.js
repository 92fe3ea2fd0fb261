'use strict';
'require baseclass';
'require dom';
'require uci';

/*
 * TEST SHIM of LuCI's ui: notifications, createHandlerFn (busy button while the promise
 * runs) and changes.apply. Real LuCI applies with a rollback timer and confirms through
 * admin/uci/confirm; the shim sends `uci apply` and reloads the page as LuCI does.
 */

return baseclass.extend({
	addNotification: function(title, children, cls) {
		var box = E('div', { 'class': 'alert-message ' + (cls || '') },
			[ title ? E('h4', {}, title) : '', children ]);
		var main = document.getElementById('maincontent') || document.body;
		main.insertBefore(box, main.firstChild);
		return box;
	},

	createHandlerFn: function(ctx, fn) {
		var bound = [].slice.call(arguments, 2);
		if (typeof fn == 'string')
			fn = ctx[fn];
		return function(ev) {
			var btn = ev && ev.currentTarget;
			if (btn) {
				btn.classList.add('spinning');
				btn.disabled = true;
			}
			return Promise.resolve(fn.apply(ctx, bound.concat([].slice.call(arguments))))
				.catch(function(err) {
					(window.__luciHandlerErrors = window.__luciHandlerErrors || []).push(String(err));
				})
				.then(function() {
					if (btn) {
						btn.classList.remove('spinning');
						btn.disabled = false;
					}
				});
		};
	},

	changes: {
		apply: function(checked) {
			return uci.apply(checked ? 30 : 0).then(function() {
				window.__luciApplied = (window.__luciApplied || 0) + 1;
				return L.require('ui');
			}).then(function(ui) {
				ui.addNotification(null, E('p', _('Configuration changes applied.')), 'notice');
			});
		}
	}
});
