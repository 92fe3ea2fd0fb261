/*
 * TEST SHIM, not LuCI. The LuCI client runtime (luci-base's luci.js and friends) cannot be
 * installed off OpenWrt, so this file stands in for the small part of it the voipqos
 * views use: the module loader for 'require'-style modules, L (env, require, bind,
 * resolveDefault, raise, isObject), the built-in classes baseclass, view, dom and poll, and
 * the globals E, _, N_ and String.prototype.format. form, network, rpc, uci and ui are
 * shim modules next to this file, written in LuCI's module format and loaded by the same
 * loader. Semantics follow LuCI (see README.md in this folder); looks and options do not.
 *
 * Runs in a browser (window.L) and in node (module.exports.makeLuCI) for unit tests.
 */
(function(root) {
	'use strict';

	/* cbi.js's String.prototype.format for %s %d %f %.Nf and %m: %[DIV][.N]m scales by
	 * DIV (default 1000) while the value is greater, to N decimals (default 2), with the
	 * units ' K', ' M', ... (+'i' for 1024) */
	function format(fmt, args) {
		var i = 0;
		return String(fmt).replace(/%(\d+)?(?:\.(\d+))?([sdfm%])/g, function(m, width, prec, conv) {
			if (conv == '%')
				return '%';
			var v = args[i++];
			if (conv == 'd')
				return String(Math.floor(+v));
			if (conv == 'f')
				return (+v).toFixed(prec == null ? 6 : +prec);
			if (conv == 'm') {
				var div = width ? +width : 1000, pr = prec != null ? ~~(10 * +('0.' + prec)) : 2,
				    units = [ ' ', ' K', ' M', ' G', ' T', ' P', ' E' ], val = +v || 0, n;
				for (n = 0; n < units.length && val > div; n++)
					val /= div;
				return n ? val.toFixed(pr) + units[n] + (div == 1024 ? 'i' : '') : val + ' ';
			}
			return String(v);
		});
	}

	if (!String.prototype.format)
		String.prototype.format = function() { return format(this, arguments); };

	/* LuCI's baseclass: extend() with __init__, and super(name, args) */
	function Class() {}
	Class.extend = function(props) {
		var Parent = this;
		var Child = function() {
			if (typeof this.__init__ == 'function')
				this.__init__.apply(this, arguments);
		};
		Child.prototype = Object.create(Parent.prototype);
		Object.assign(Child.prototype, props);
		Child.prototype.constructor = Child;
		Child.extend = Class.extend;
		Child.isSubclass = Class.isSubclass;
		return Child;
	};
	Class.isSubclass = function(c) { return typeof c == 'function'; };
	Class.prototype.super = function(name, args) {
		var proto = Object.getPrototypeOf(Object.getPrototypeOf(this));
		while (proto && !Object.prototype.hasOwnProperty.call(proto, name))
			proto = Object.getPrototypeOf(proto);
		return proto[name].apply(this, args || []);
	};

	function makeDom(document) {
		var instances = new WeakMap();
		return {
			elem: function(e) { return e != null && typeof e == 'object' && 'nodeType' in e; },
			append: function(node, children) {
				if (Array.isArray(children)) {
					children.forEach(function(c) {
						if (c == null)
							return;
						node.appendChild(this.elem(c) ? c : document.createTextNode(String(c)));
					}, this);
				}
				else if (this.elem(children)) {
					node.appendChild(children);
				}
				else if (children != null) {
					node.innerHTML = String(children);  /* LuCI: a bare string is markup */
				}
				return node;
			},
			content: function(node, children) {
				while (node.firstChild)
					node.removeChild(node.firstChild);
				return this.append(node, children);
			},
			create: function(tag, attrs, children) {
				if (Array.isArray(attrs) || (attrs != null && typeof attrs != 'object') || this.elem(attrs)) {
					children = attrs;
					attrs = null;
				}
				var el = this.elem(tag) ? tag : document.createElement(tag);
				for (var k in (attrs || {})) {
					var v = attrs[k];
					if (v == null)
						continue;
					if (typeof v == 'function')
						el.addEventListener(k, v);
					else
						el.setAttribute(k, typeof v == 'object' ? JSON.stringify(v) : v);
				}
				return this.append(el, children);
			},
			bindClassInstance: function(node, inst) { instances.set(node, inst); },
			findClassInstance: function(node) {
				for (; node; node = node.parentNode)
					if (instances.has(node))
						return instances.get(node);
				return null;
			},
			callClassMethod: function(node, method) {
				var inst = this.findClassInstance(node);
				return inst ? inst[method].apply(inst, [].slice.call(arguments, 2)) : null;
			}
		};
	}

	/* LuCI's poll: a 1 s tick; a function is skipped while its previous run is pending,
	 * so a slow daemon never has two requests from one page in flight. */
	function makePoll(setIntervalFn) {
		var queue = [], tick = 0, timer = null;
		return {
			add: function(fn, interval) {
				queue.push({ fn: fn, i: Math.max(1, interval | 0), busy: false });
				this.start();
			},
			remove: function(fn) {
				queue = queue.filter(function(e) { return e.fn !== fn; });
			},
			start: function() {
				if (timer === null)
					timer = setIntervalFn(this.step.bind(this), 1000);
			},
			active: function() { return timer !== null; },
			step: function() {
				tick++;
				queue.forEach(function(e) {
					if (tick % e.i || e.busy)
						return;
					e.busy = true;
					Promise.resolve().then(e.fn).catch(function(err) {
						console.error('poll:', err);
					}).then(function() { e.busy = false; });
				});
			}
		};
	}

	/*
	 * The loader: a module is the text of a file whose leading string directives
	 * ('use strict', 'require NAME [as ALIAS]') list its dependencies; its body returns a
	 * class, which is instantiated once (as LuCI does) and handed to its requirers.
	 */
	function makeLuCI(opts) {
		var window = opts.window, document = opts.document, classes = {}, pending = {};

		var L = {
			env: opts.env || {},
			Class: Class,
			bind: function(fn, self) {
				var args = [].slice.call(arguments, 2);
				return function() { return fn.apply(self, args.concat([].slice.call(arguments))); };
			},
			isObject: function(v) { return v != null && typeof v == 'object' && !Array.isArray(v); },
			resource: function() { return [ L.env.resource ].concat([].slice.call(arguments)).join('/'); },
			resolveDefault: function(p, def) { return Promise.resolve(p).catch(function() { return def; }); },
			raise: function(type, fmt) {
				var e = new Error(format(fmt, [].slice.call(arguments, 2)));
				e.name = type;
				throw e;
			},
			error: function() { return L.raise.apply(L, arguments); },
			require: function(name) {
				if (classes[name])
					return Promise.resolve(classes[name]);
				if (!pending[name])
					pending[name] = opts.fetchText(name).then(function(src) { return compile(name, src); });
				return pending[name];
			}
		};

		function compile(name, src) {
			var deps = [], args = [], m, re = /^\s*(?:'([^']*)'|"([^"]*)")\s*;?/, rest = src;
			while ((m = re.exec(rest)) !== null) {
				var d = (m[1] != null ? m[1] : m[2]).match(/^require[ \t]+(\S+)(?:[ \t]+as[ \t]+(\w+))?$/);
				if (d) {
					deps.push(d[1]);
					args.push(d[2] || d[1].replace(/[^a-zA-Z0-9_]/g, '_'));
				}
				rest = rest.slice(m[0].length);
			}
			return Promise.all(deps.map(function(d) { return L.require(d); })).then(function(insts) {
				var factory = new Function(['window', 'document', 'L'].concat(args).join(', '),
					src + '\n//# sourceURL=' + name + '.js');
				var cls = factory.apply(null, [window, document, L].concat(insts));
				if (typeof cls != 'function')
					L.raise('TypeError', '"%s" factory yields invalid constructor', name);
				return (classes[name] = new cls());
			});
		}

		var dom = document ? makeDom(document) : null;
		classes.baseclass = Class;
		classes.dom = dom;
		classes.poll = makePoll(opts.setInterval || setInterval);
		classes.view = Class.extend({
			/* LuCI's View: load(), then render() into #view, then the form footer */
			__init__: function() {
				var vp = document.getElementById('view');
				return Promise.resolve(this.load()).then(L.bind(this.render, this))
					.then(L.bind(function(node) {
						dom.content(vp, node);
						return this.addFooter();
					}, this))
					.then(function(footer) { if (footer) vp.appendChild(footer); })
					.catch(function(err) { L.showError(err); });
			},
			load: function() {},
			render: function() {},
			handleSave: function() {
				return Promise.all([].map.call(document.querySelectorAll('#view .cbi-map'),
					function(map) { return dom.callClassMethod(map, 'save'); }));
			},
			handleSaveApply: function(ev, mode) {
				return this.handleSave(ev).then(function() {
					return classes.ui.changes.apply(mode == '0');
				});
			},
			handleReset: function() { window.location.reload(); },
			addFooter: function() {
				var self = this, buttons = [
					[ 'handleSaveApply', 'cbi-button-apply', _('Save & Apply'), '0' ],
					[ 'handleSave', 'cbi-button-save', _('Save') ],
					[ 'handleReset', 'cbi-button-reset', _('Reset') ]
				].filter(function(b) { return typeof self[b[0]] == 'function'; });
				if (!buttons.length)
					return null;
				return L.require('ui').then(function(ui) {
					return E('div', { 'class': 'cbi-page-actions' }, buttons.map(function(b) {
						return E('button', { 'class': 'btn cbi-button ' + b[1],
							'click': ui.createHandlerFn(self, b[0], b[3]) }, b[2]);
					}));
				});
			}
		});

		L.dom = dom;
		L.poll = classes.poll;
		L.showError = function(err) {
			(window.__luciErrors = window.__luciErrors || []).push(String(err && err.stack || err));
			if (document && document.getElementById('view'))
				dom.content(document.getElementById('view'),
					E('div', { 'class': 'alert-message error' }, String(err)));
		};
		return L;
	}

	var api = { makeLuCI: makeLuCI, format: format, Class: Class };

	if (typeof module == 'object' && module.exports) {
		module.exports = api;
	}
	else {
		var env = root.L_ENV || {};
		root.L = makeLuCI({
			env: env,
			window: root,
			document: root.document,
			fetchText: function(name) {
				var shimmed = (env.shimmed || []).indexOf(name) >= 0,
				    url = (shimmed ? env.shim : env.resource) + '/' + name.replace(/\./g, '/') + '.js';
				return fetch(url).then(function(res) {
					if (!res.ok)
						L.raise('NetworkError', 'HTTP %d fetching %s', res.status, url);
					return res.text();
				});
			}
		});
		root.E = function() { return root.L.dom.create.apply(root.L.dom, arguments); };
		root._ = function(s) { return s; };
		root.N_ = function(n, s, p) { return n == 1 ? s : p; };
		root.addEventListener('error', function(ev) { root.L.showError(ev.error || ev.message); });
		root.addEventListener('unhandledrejection', function(ev) { root.L.showError(ev.reason); });
	}
})(typeof window != 'undefined' ? window : globalThis);
