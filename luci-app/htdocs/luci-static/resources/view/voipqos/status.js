'use strict';
'require view';
'require poll';
'require rpc';
'require ui';
'require dom';
'require voipqos.logic as logic';

/*
 * Live status of voipqos: one `voipqos status` call per poll (every second) feeds the
 * badge, the calls table, the counters, transitions, warnings and the graph. The graph
 * keeps a fixed number of samples, so the page can stay open for hours. Text from the
 * daemon is always passed to E()/dom in an array: LuCI treats a bare string as markup.
 */

/* No `expect`: a refusal's data ({ error, status }) or a bare status must reach
 * logic.classifyReply, not be replaced by a default (docs/api.md). */
var callStatus = rpc.declare({
	object: 'voipqos',
	method: 'status'
});

var callSetMode = rpc.declare({
	object: 'voipqos',
	method: 'set_mode',
	params: [ 'mode', 'expires' ]
});

var POLL_SECONDS = 1,
    GRAPH_SPAN = 180,
    GRAPH_W = 600,
    GRAPH_H = 160,
    TRANSITIONS_SHOWN = 8,
    SVG_NS = 'http://www.w3.org/2000/svg';

function svg(tag, attrs) {
	var el = document.createElementNS(SVG_NS, tag);
	for (var k in attrs)
		el.setAttribute(k, attrs[k]);
	return el;
}

/* ui.Table puts a bare string into its cell as markup: daemon text goes in as text nodes */
function textRows(rows) {
	return rows.map(function(row) {
		return row.map(function(cell) { return document.createTextNode(cell); });
	});
}

/* A call's quality, one coloured line each (logic.qualityLines). */
function qualityCell(q) {
	return E('div', { 'class': 'vq-quality' }, logic.qualityLines(q).map(function(l) {
		return E('div', { 'class': 'vq-q-' + l.grade }, [ l.text ]);
	}));
}

/* Rows with each call's quality cell appended. */
function withQuality(rows, calls) {
	return rows.map(function(r, i) { return r.concat([ qualityCell(calls[i].quality) ]); });
}

return view.extend({
	load: function() {
		return this.fetchStatus();
	},

	/* { reply, err } so a JSON-RPC error (rejected promise) is shown, not swallowed */
	fetchStatus: function() {
		return callStatus().then(function(reply) {
			return { reply: reply };
		}, function(err) {
			return { err: err };
		});
	},

	render: function(status) {
		document.querySelector('head').appendChild(E('link', {
			'rel': 'stylesheet', 'type': 'text/css', 'href': L.resource('voipqos/status.css')
		}));
		this.samples = new logic.RingBuffer(GRAPH_SPAN / POLL_SECONDS + 1);
		this.reading = null;

		this.badge = E('span', { 'class': 'vq-badge', 'id': 'vq-badge' });
		this.since = E('span', { 'id': 'vq-since' });
		this.reason = E('div', { 'id': 'vq-reason' });
		this.detection = E('div', { 'id': 'vq-detection', 'class': 'cbi-value-description' });
		this.warnings = E('div', { 'id': 'vq-warnings' });
		this.calls = new ui.Table(
			[ _('LAN host'), _('Far end'), _('Flows'), _('pps out / in'), _('Rate out / in'), _('Duration'), _('Quality') ],
			{ id: 'vq-calls', sortable: false }, E('em', _('No active call')));
		this.recent = new ui.Table(
			[ _('Ended'), _('LAN host'), _('Far end'), _('Duration'), _('Quality') ],
			{ id: 'vq-recent', sortable: false }, E('em', _('No finished call yet')));
		this.counters = new ui.Table(
			[ _('Packets'), _('Bytes'), _('Now'), _('Backend'), _('Classifier'), _('Applied') ],
			{ id: 'vq-counters', sortable: false });
		this.transitions = new ui.Table([ _('Time'), _('State'), _('Why') ],
			{ id: 'vq-transitions', sortable: false }, E('em', _('No transition yet')));
		this.graph = svg('svg', {
			'class': 'vq-graph', 'id': 'vq-graph',
			'viewBox': '0 0 %d %d'.format(GRAPH_W, GRAPH_H),
			'preserveAspectRatio': 'none'
		});

		var node = E('div', { 'class': 'cbi-map' }, [
			E('h2', {}, _('VoIP QoS: Status')),
			E('div', { 'class': 'cbi-map-descr' },
				_('Shaping switches on only while a call is active. This page refreshes every second.')),

			E('div', { 'class': 'cbi-section' }, [
				E('h3', {}, _('State')),
				E('p', {}, [ this.badge, ' ', this.since ]),
				this.reason,
				this.detection,
				E('div', { 'class': 'cbi-page-actions', 'style': 'text-align:left' }, [
					E('button', {
						'class': 'btn cbi-button cbi-button-positive', 'id': 'vq-force-on',
						'click': ui.createHandlerFn(this, 'handleMode', 'on')
					}, _('Force on')),
					' ',
					E('button', {
						'class': 'btn cbi-button cbi-button-negative', 'id': 'vq-force-off',
						'click': ui.createHandlerFn(this, 'handleMode', 'off')
					}, _('Force off')),
					' ',
					E('button', {
						'class': 'btn cbi-button cbi-button-neutral', 'id': 'vq-auto',
						'click': ui.createHandlerFn(this, 'handleMode', 'auto')
					}, _('Auto'))
				]),
				this.warnings
			]),

			E('div', { 'class': 'cbi-section' }, [
				E('h3', {}, _('Throughput')),
				this.graph,
				E('div', { 'class': 'vq-legend' }, [
					E('span', {}, [ E('span', { 'class': 'vq-swatch', 'style': 'background:#2e7d32' }), _('Voice class') ]),
					E('span', {}, [ E('span', { 'class': 'vq-swatch', 'style': 'background:#1565c0' }), _('Total') ]),
					E('span', {}, [ E('span', { 'class': 'vq-swatch', 'style': 'background:#c8e6c9' }), _('Profile on') ])
				])
			]),

			E('div', { 'class': 'cbi-section' }, [ E('h3', {}, _('Active calls')), this.calls.render() ]),
			E('div', { 'class': 'cbi-section' }, [ E('h3', {}, _('Recent calls')), this.recent.render() ]),
			E('div', { 'class': 'cbi-section' }, [ E('h3', {}, _('Voice class counters')), this.counters.render() ]),
			E('div', { 'class': 'cbi-section' }, [ E('h3', {}, _('Last transitions')), this.transitions.render() ])
		]);

		this.update(status);
		poll.add(L.bind(this.refresh, this), POLL_SECONDS);

		return node;
	},

	refresh: function() {
		return this.fetchStatus().then(L.bind(this.update, this));
	},

	update: function(answer) {
		var now = Date.now() / 1000,
		    st = answer.reply,
		    verdict = logic.classifyReply(st, answer.err);

		if (verdict.kind != 'ok') {
			var b = logic.stateBadge(null);
			this.badge.className = 'vq-badge ' + b.cls;
			this.badge.setAttribute('data-state', verdict.kind);
			dom.content(this.since, '');
			if (verdict.kind == 'not_running') {
				dom.content(this.badge, _('Not running'));
				dom.content(this.reason, _('The voipqos service is not running. Start it with /etc/init.d/voipqos start.'));
			}
			else {
				dom.content(this.badge, _('Error'));
				dom.content(this.reason, [ _('The status call failed: %s').format(verdict.message) ]);
			}
			return;
		}

		var badge = logic.stateBadge(st.state);
		this.badge.className = 'vq-badge ' + badge.cls;
		this.badge.setAttribute('data-state', st.state);
		dom.content(this.badge, [ badge.label ]);
		dom.content(this.since, [ logic.formatSince(st.since, now) ]);
		dom.content(this.reason, [ st.reason ? _('Why: %s').format(st.reason) : '' ]);
		dom.content(this.detection, [ logic.detectionLine(st.observer) ]);

		this.updateWarnings(st.warnings);
		var calls = Array.isArray(st.calls) ? st.calls : [],
		    recent = Array.isArray(st.recent_calls) ? st.recent_calls : [];
		this.calls.update(withQuality(textRows(logic.callRows(calls)), calls));
		this.recent.update(withQuality(textRows(logic.recentRows(recent)), recent));
		this.updateCounters(st, now);
		this.transitions.update(textRows(logic.transitionRows(st.transitions, TRANSITIONS_SHOWN)));
		this.updateGraph(now);
	},

	updateWarnings: function(warnings) {
		dom.content(this.warnings, (Array.isArray(warnings) ? warnings : []).map(function(w) {
			return E('div', { 'class': 'alert-message warning', 'data-code': w.code }, [
				E('strong', {}, [ w.message || w.code ]),
				w.fix ? E('div', {}, [ _('Fix: %s').format(w.fix) ]) : ''
			]);
		}));
	},

	updateCounters: function(st, now) {
		var reading = logic.readCounters(st, now),
		    rate = this.reading ? logic.counterRate(this.reading.voice, reading.voice) : null,
		    profile = st.profile || {};

		this.samples.push(logic.graphSample(this.reading, reading, st.active));
		this.reading = reading;

		this.counters.update(textRows([ [ String(reading.voice.packets), logic.formatBytes(reading.voice.bytes),
			rate ? logic.formatPps(rate.pps) + ' pps, ' + logic.formatRate(rate.kbps) : '-',
			profile.backend || '-', profile.classifier || '-',
			profile.applied ? _('yes') : _('no') ] ]));
	},

	updateGraph: function(now) {
		var g = logic.graphGeometry(this.samples.toArray(), now, GRAPH_SPAN, GRAPH_W, GRAPH_H),
		    children = [];

		g.on.forEach(function(r) {
			children.push(svg('rect', { 'class': 'onband', 'x': r[0].toFixed(1), 'y': 0,
				'width': Math.max(1, r[1] - r[0]).toFixed(1), 'height': GRAPH_H }));
		});
		[ 0.25, 0.5, 0.75 ].forEach(function(f) {
			children.push(svg('line', { 'class': 'grid', 'x1': 0, 'x2': GRAPH_W,
				'y1': GRAPH_H * f, 'y2': GRAPH_H * f }));
		});
		children.push(svg('polyline', { 'class': 'total', 'points': g.total }));
		children.push(svg('polyline', { 'class': 'voice', 'points': g.voice }));

		var label = svg('text', { 'x': 4, 'y': 12 });
		label.textContent = logic.formatRate(g.max);
		children.push(label);
		var span = svg('text', { 'x': 4, 'y': GRAPH_H - 4 });
		span.textContent = _('last %d min').format(GRAPH_SPAN / 60);
		children.push(span);

		dom.content(this.graph, children);
	},

	handleMode: function(mode) {
		var args = logic.modeArgs(mode),
		    refresh = L.bind(this.refresh, this);

		function refused(reply, err) {
			var verdict = logic.classifyReply(reply, err);
			if (verdict.kind != 'ok')
				ui.addNotification(null, E('p', { 'id': 'vq-mode-error' }, [
					_('Could not switch the mode: %s').format(verdict.kind == 'not_running'
						? _('the voipqos service is not running') : verdict.message) ]), 'error');
			return refresh();
		}

		return callSetMode(args.mode, args.expires).then(function(reply) {
			return refused(reply);
		}, function(err) {
			return refused(null, err);
		});
	},

	handleSaveApply: null,
	handleSave: null,
	handleReset: null
});
