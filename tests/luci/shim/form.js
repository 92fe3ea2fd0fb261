'use strict';
'require baseclass';
'require dom';
'require uci';

/*
 * TEST SHIM of LuCI's form: Map, NamedSection (tab/taboption/option), and the option
 * classes Value, Flag, ListValue, DynamicList with datatype validation and depends().
 * Save writes through uci like LuCI: a valid value is set, an empty one with rmempty is
 * removed, a hidden dependant is removed, and any invalid field stops the save.
 * Datatypes: the subset of LuCI's validation.js the voipqos settings use; Value with
 * choices as a text field with a datalist.
 */

var TYPES = {
	string: function() { return true; },
	uciname: function(v) { return /^[a-zA-Z0-9_]+$/.test(v); },
	netdevname: function(v) { return v != '.' && v != '..' && /^[^:\/%\s]{1,15}$/.test(v); },
	directory: function() { return true; },
	uinteger: function(v) { return /^\d+$/.test(v); },
	integer: function(v) { return /^-?\d+$/.test(v); },
	range: function(v, lo, hi) { return /^-?\d+(?:\.\d+)?$/.test(v) && +v >= lo && +v <= hi; },
	min: function(v, lo) { return /^-?\d+(?:\.\d+)?$/.test(v) && +v >= lo; },
	max: function(v, hi) { return /^-?\d+(?:\.\d+)?$/.test(v) && +v <= hi; },
	port: function(v) { return /^-?\d+$/.test(v) && +v >= 0 && +v <= 65535; },
	portrange: function(v) {
		var m = v.match(/^(\d+)-(\d+)$/);
		return m ? (+m[1] <= +m[2] && +m[2] <= 65535) : TYPES.port(v);
	},
	and: function(v) { return [].slice.call(arguments, 1).every(function(f) { return f(v); }); },
	or: function(v) { return [].slice.call(arguments, 1).some(function(f) { return f(v); }); }
};

/* "and(uinteger,range(1,5))" -> a predicate; unknown names throw, as LuCI's compiler does */
function compile(code) {
	var m = code.trim().match(/^(\w+)(?:\((.*)\))?$/);
	if (!m || !TYPES[m[1]])
		L.raise('SyntaxError', 'Unhandled token "%s"', code);
	var args = [], depth = 0, start = 0, inner = m[2] || '';
	for (var i = 0; i <= inner.length; i++) {
		var ch = inner[i];
		if (ch == '(')
			depth++;
		else if (ch == ')')
			depth--;
		else if ((ch == ',' || i == inner.length) && depth == 0) {
			var a = inner.slice(start, i).trim();
			if (a !== '')
				args.push(isNaN(a) ? compile(a) : +a);
			start = i + 1;
		}
	}
	return function(v) { return TYPES[m[1]].apply(null, [v].concat(args)); };
}

var AbstractValue = baseclass.extend({
	__init__: function(map, section, option, title, description) {
		this.map = map;
		this.section = section;
		this.option = option;
		this.title = title || '';
		this.description = description || '';
		this.rmempty = true;
		this.deps = [];
	},

	depends: function(field, value) {
		var d = {};
		d[field] = value;
		this.deps.push(d);
	},

	cfgvalue: function(sid) {
		var v = uci.get(this.map.config, sid, this.option);
		return v == null ? this.default : v;
	},

	isActive: function(sid) {
		var sec = this.section;
		return !this.deps.length || this.deps.some(function(d) {
			return Object.keys(d).every(function(f) {
				var o = sec.children.filter(function(c) { return c.option == f; })[0];
				return o && o.formvalue(sid) == d[f];
			});
		});
	},

	validate: function(value) {
		if (!this.datatype || value === '' || value == null)
			return true;
		var ok = compile(this.datatype);
		return [].concat(value).every(function(v) { return ok(v); });
	},

	renderRow: function(sid) {
		this.node = E('div', { 'class': 'cbi-value', 'data-name': this.option, 'id': 'cbi-' + this.map.config + '-' + sid + '-' + this.option }, [
			E('label', { 'class': 'cbi-value-title' }, this.title),
			E('div', { 'class': 'cbi-value-field' }, [
				this.renderWidget(sid, this.cfgvalue(sid)),
				this.description ? E('div', { 'class': 'cbi-value-description' }, this.description) : ''
			])
		]);
		return this.node;
	},

	input: function() { return this.node.querySelector('input, select'); },
	formvalue: function() { return this.input().value; },

	/* the value to store, null to remove, or an Error for an invalid entry */
	parse: function(sid) {
		var v = this.formvalue(sid);
		if (!this.isActive(sid) || ((v === '' || (Array.isArray(v) && !v.length)) && this.rmempty))
			return null;
		return this.validate(v) ? v : new Error(this.title + ': ' + _('invalid value') + ' ' + JSON.stringify(v));
	}
});

/* with value() choices a text field suggesting them (LuCI: a combobox that also takes a
 * value it does not list) */
var Value = AbstractValue.extend({
	value: function(key, label) { (this.choices = this.choices || []).push([ key, label || key ]); },
	renderWidget: function(sid, value) {
		var inp = E('input', { 'type': 'text', 'class': 'cbi-input-text', 'name': this.option,
			'value': value == null ? '' : value, 'placeholder': this.placeholder });
		var self = this;
		inp.addEventListener('input', function() {
			inp.classList.toggle('cbi-input-invalid', !self.validate(inp.value));
		});
		if (!this.choices)
			return inp;
		inp.setAttribute('list', 'choices-' + this.option);
		return E('span', {}, [ inp, E('datalist', { 'id': 'choices-' + this.option },
			this.choices.map(function(c) { return E('option', { 'value': c[0] }, c[1]); })) ]);
	}
});

var Flag = AbstractValue.extend({
	renderWidget: function(sid, value) {
		var attrs = { 'type': 'checkbox', 'class': 'cbi-input-checkbox', 'name': this.option };
		if (value == '1')
			attrs.checked = 'checked';
		return E('input', attrs);
	},
	formvalue: function() { return this.input().checked ? '1' : '0'; }
});

var ListValue = AbstractValue.extend({
	__init__: function() {
		AbstractValue.prototype.__init__.apply(this, arguments);
		this.choices = [];
	},
	value: function(key, label) { this.choices.push([ key, label || key ]); },
	renderWidget: function(sid, value) {
		return E('select', { 'class': 'cbi-input-select', 'name': this.option }, this.choices.map(function(c) {
			var a = { 'value': c[0] };
			if (c[0] == value)
				a.selected = 'selected';
			return E('option', a, c[1]);
		}));
	}
});

var DynamicList = AbstractValue.extend({
	renderWidget: function(sid, value) {
		var box = E('div', { 'class': 'cbi-dynlist', 'data-name': this.option }),
		    add = function(v) {
			box.insertBefore(E('input', { 'type': 'text', 'class': 'cbi-input-text', 'value': v }), box.lastChild);
		    };
		box.appendChild(E('button', { 'class': 'cbi-button cbi-button-add', 'click': function(ev) {
			ev.preventDefault();
			add('');
		} }, '+'));
		[].concat(value == null ? [] : value).forEach(add);
		return box;
	},
	formvalue: function() {
		return [].map.call(this.node.querySelectorAll('.cbi-dynlist input'), function(i) { return i.value.trim(); })
			.filter(function(v) { return v !== ''; });
	}
});

var NamedSection = baseclass.extend({
	__init__: function(map, sid, type, title) {
		this.map = map;
		this.section = sid;
		this.sectiontype = type;
		this.title = title;
		this.tabs = [];
		this.children = [];
	},

	tab: function(name, title) { this.tabs.push([ name, title ]); },

	option: function(cls, option, title, description) {
		var o = new cls(this.map, this, option, title, description);
		this.children.push(o);
		return o;
	},

	taboption: function(tab, cls, option, title, description) {
		var o = this.option(cls, option, title, description);
		o.tab = tab;
		return o;
	},

	render: function() {
		var sid = this.section, self = this,
		    menu = E('ul', { 'class': 'cbi-tabmenu' }),
		    panes = E('div', {});

		this.tabs.forEach(function(t, i) {
			var pane = E('div', { 'class': 'cbi-tab-pane', 'data-tab': t[0], 'style': i ? 'display:none' : '' },
				self.children.filter(function(o) { return o.tab == t[0]; }).map(function(o) { return o.renderRow(sid); }));
			var li = E('li', { 'class': i ? 'cbi-tab-disabled' : 'cbi-tab', 'data-tab': t[0] },
				E('a', { 'href': '#', 'click': function(ev) {
					ev.preventDefault();
					[].forEach.call(menu.children, function(x) { x.className = x === li ? 'cbi-tab' : 'cbi-tab-disabled'; });
					[].forEach.call(panes.children, function(p) { p.style.display = p === pane ? '' : 'none'; });
				} }, t[1]));
			menu.appendChild(li);
			panes.appendChild(pane);
		});

		var node = E('div', { 'class': 'cbi-section', 'id': 'cbi-' + this.map.config + '-' + sid }, [ menu, panes ]);
		node.addEventListener('change', function() { self.updateDepends(); });
		return node;
	},

	updateDepends: function() {
		var sid = this.section;
		this.children.forEach(function(o) { o.node.style.display = o.isActive(sid) ? '' : 'none'; });
	},

	save: function() {
		var sid = this.section, config = this.map.config;
		var results = this.children.map(function(o) { return [ o, o.parse(sid) ]; });
		var bad = results.filter(function(r) { return r[1] instanceof Error; });
		if (bad.length)
			return Promise.reject(bad[0][1]);
		results.forEach(function(r) {
			if (r[1] === null)
				uci.unset(config, sid, r[0].option);
			else
				uci.set(config, sid, r[0].option, r[1]);
		});
		return Promise.resolve();
	}
});

var Map = baseclass.extend({
	__init__: function(config, title, description) {
		this.config = config;
		this.title = title;
		this.description = description;
		this.sections = [];
	},

	section: function(cls) {
		var s = new cls(this, arguments[1], arguments[2], arguments[3]);
		this.sections.push(s);
		return s;
	},

	render: function() {
		return uci.load(this.config).then(L.bind(function() {
			var node = E('div', { 'class': 'cbi-map', 'id': 'cbi-' + this.config }, [
				this.title ? E('h2', {}, this.title) : '',
				this.description ? E('div', { 'class': 'cbi-map-descr' }, this.description) : ''
			].concat(this.sections.map(function(s) { return s.render(); })));
			dom.bindClassInstance(node, this);
			this.sections.forEach(function(s) { s.updateDepends(); });
			return node;
		}, this));
	},

	save: function() {
		return Promise.all(this.sections.map(function(s) { return s.save(); }))
			.then(function() { return uci.save(); })
			.catch(function(err) {
				L.require('ui').then(function(ui) {
					ui.addNotification(null, E('p', String(err.message || err)), 'error');
				});
				throw err;
			});
	}
});

return baseclass.extend({
	Map: Map,
	NamedSection: NamedSection,
	AbstractValue: AbstractValue,
	Value: Value,
	Flag: Flag,
	ListValue: ListValue,
	DynamicList: DynamicList,
	compileDatatype: compile
});
