'use strict';
'require baseclass';
'require dom';
'require uci';

/*
 * TEST SHIM of LuCI's ui: notifications, createHandlerFn (busy button while the promise
 * runs), Table and changes.apply. Real LuCI applies with a rollback timer and confirms
 * through admin/uci/confirm; the shim sends `uci apply` and reloads the page as LuCI does.
 */

/* LuCI's ui.Table (luci-base ui.js UITable) without sorting: a table.table with a
 * tr.table-titles row of th.th; update(rows) replaces the body rows (tr.tr of td.td with
 * data-title), or shows the placeholder row when there are none; render() -> the node. */
var Table = baseclass.extend({
	__init__: function(captions, options, placeholder) {
		this.options = options || {};
		this.placeholder = placeholder;
		this.node = E('table', { 'id': this.options.id, 'class': 'table' }, [
			E('tr', { 'class': 'tr table-titles' }, captions.map(function(c) {
				return E('th', { 'class': 'th' }, [ c ]);
			}))
		]);
		if (placeholder)
			this.node.appendChild(E('tr', { 'class': 'tr placeholder' }, E('td', { 'class': 'td' }, placeholder)));
	},

	update: function(data, placeholderText) {
		var node = this.node, titles = node.firstElementChild,
		    placeholder = placeholderText != null ? placeholderText
			: (this.options.placeholder != null ? this.options.placeholder : this.placeholder);
		if (!Array.isArray(data))
			return node;
		while (node.lastElementChild !== titles)
			node.removeChild(node.lastElementChild);
		data.forEach(function(row, n) {
			node.appendChild(E('tr', { 'class': 'tr cbi-rowstyle-' + ((n % 2) ? 2 : 1) },
				row.map(function(cell, i) {
					return E('td', { 'class': 'td', 'data-title': titles.children[i].textContent },
						cell != null ? cell : '');
				})));
		});
		if (placeholder && !data.length)
			node.appendChild(E('tr', { 'class': 'tr placeholder' }, E('td', { 'class': 'td' }, placeholder)));
		return node;
	},

	render: function() {
		return this.node;
	}
});

return baseclass.extend({
	Table: Table,

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
