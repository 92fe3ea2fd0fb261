'use strict';
'require baseclass';

/*
 * Plain functions behind the voipqos views: formatting, state -> badge, rates from
 * counters, the bounded sample buffer and the graph geometry. No DOM and no RPC here,
 * so node's test runner can check them directly (tests/luci/logic.test.mjs).
 */

var BADGES = {
	off: { cls: 'off' },
	watching: { cls: 'watching' },
	on: { cls: 'on' },
	forced_on: { cls: 'forced-on' },
	forced_off: { cls: 'forced-off' }
};

function badgeLabel(state) {
	switch (state) {
	case 'off': return _('Off');
	case 'watching': return _('Watching');
	case 'on': return _('On: call active');
	case 'forced_on': return _('Forced on');
	case 'forced_off': return _('Forced off');
	default: return _('Unknown');
	}
}

/* Call quality colours (docs/quality.md): below MOS 4.0 or from 1 % loss a listener starts
 * to notice (fair), below 3.6 or from 3 % many are dissatisfied (poor). */
var FAIR = { mos: 4.0, loss: 1 }, POOR = { mos: 3.6, loss: 3 },
    GRADE_ORDER = { unknown: 0, good: 1, fair: 2, poor: 3 };

function pad2(n) {
	return (n < 10 ? '0' : '') + n;
}

function num(x) {
	return (typeof x == 'number' && isFinite(x)) ? x : 0;
}

/* A fixed-capacity FIFO: pushing past capacity drops the oldest sample, so hours of
 * polling keep the same memory. */
function RingBuffer(capacity) {
	this.capacity = Math.max(1, capacity | 0);
	this.items = new Array(this.capacity);
	this.start = 0;
	this.length = 0;
}

RingBuffer.prototype.push = function(item) {
	var end = (this.start + this.length) % this.capacity;
	this.items[end] = item;
	if (this.length < this.capacity)
		this.length++;
	else
		this.start = (this.start + 1) % this.capacity;
};

RingBuffer.prototype.toArray = function() {
	var out = [];
	for (var i = 0; i < this.length; i++)
		out.push(this.items[(this.start + i) % this.capacity]);
	return out;
};

RingBuffer.prototype.last = function() {
	return this.length ? this.items[(this.start + this.length - 1) % this.capacity] : null;
};

RingBuffer.prototype.clear = function() {
	this.items = new Array(this.capacity);
	this.start = 0;
	this.length = 0;
};

return baseclass.extend({
	RingBuffer: RingBuffer,

	/* {label, cls} for a daemon state (docs/design.md: off|watching|on|forced_on|forced_off). */
	stateBadge: function(state) {
		var b = BADGES[state] || { cls: 'unknown' };
		return { label: badgeLabel(state), cls: b.cls };
	},

	/* 42 -> "42 s", 185 -> "3 min 05 s", 7260 -> "2 h 01 min". */
	formatDuration: function(seconds) {
		var s = Math.max(0, Math.floor(num(seconds)));
		if (s < 60)
			return s + ' s';
		if (s < 3600)
			return Math.floor(s / 60) + ' min ' + pad2(s % 60) + ' s';
		return Math.floor(s / 3600) + ' h ' + pad2(Math.floor(s % 3600 / 60)) + ' min';
	},

	/* Local wall-clock time of a Unix timestamp, HH:MM:SS. */
	formatClock: function(ts) {
		var d = new Date(num(ts) * 1000);
		return pad2(d.getHours()) + ':' + pad2(d.getMinutes()) + ':' + pad2(d.getSeconds());
	},

	/* "since 12:03:04 (3 min 05 s ago)"; empty without a timestamp. */
	formatSince: function(since, now) {
		if (typeof since != 'number' || !isFinite(since))
			return '';
		return _('since %s (%s ago)').format(this.formatClock(since),
			this.formatDuration(num(now) - since));
	},

	/* kbit/s in LuCI's own metric formatting: 80 -> "80.00 Kbit/s". */
	formatRate: function(kbps) {
		return '%.2mbit/s'.format(num(kbps) * 1000);
	},

	formatPps: function(pps) {
		return num(pps).toFixed(1);
	},

	/* LuCI's binary formatting, as nlbwmon uses it: 1536 -> "1.50 KiB". */
	formatBytes: function(bytes) {
		return '%1024.2mB'.format(num(bytes));
	},

	/*
	 * Rate between two counter readings {t, packets, bytes}: {pps, kbps}, or null when it
	 * cannot be known (first reading, no time passed, counters reset by a reload).
	 */
	counterRate: function(prev, cur) {
		if (!prev || !cur)
			return null;
		var dt = num(cur.t) - num(prev.t),
		    dp = num(cur.packets) - num(prev.packets),
		    db = num(cur.bytes) - num(prev.bytes);
		if (dt <= 0 || dp < 0 || db < 0)
			return null;
		return { pps: dp / dt, kbps: db * 8 / 1000 / dt };
	},

	/*
	 * The counter readings of one status document, stamped with the time it was read.
	 * Total is the WAN device's own traffic (both ways) when the daemon reports it, so the
	 * graph shows the line while the profile is off too; else voice + other.
	 */
	readCounters: function(status, t) {
		var c = (status && status.profile && status.profile.counters) || {},
		    voice = c.voice || {}, other = c.other || {},
		    dev = status && status.traffic;
		return {
			t: t,
			voice: { t: t, packets: num(voice.packets), bytes: num(voice.bytes) },
			total: dev ? { t: t, packets: num(dev.rx_packets) + num(dev.tx_packets),
			               bytes: num(dev.rx_bytes) + num(dev.tx_bytes) }
			           : { t: t, packets: num(voice.packets) + num(other.packets),
			               bytes: num(voice.bytes) + num(other.bytes) }
		};
	},

	/*
	 * One graph sample from two successive counter readings: voice and total kbit/s and
	 * whether the profile is on. Rates that cannot be known count as 0.
	 */
	graphSample: function(prevReading, reading, active) {
		var v = prevReading ? this.counterRate(prevReading.voice, reading.voice) : null,
		    a = prevReading ? this.counterRate(prevReading.total, reading.total) : null;
		return {
			t: reading.t,
			voice: v ? v.kbps : 0,
			total: a ? a.kbps : 0,
			on: !!active
		};
	},

	/* A round axis maximum >= value: 1, 2, 5 x 10^n kbit/s (at least 10). */
	niceMax: function(value) {
		var v = Math.max(10, num(value)), p = Math.pow(10, Math.floor(Math.log10(v)));
		var steps = [1, 2, 5, 10];
		for (var i = 0; i < steps.length; i++)
			if (steps[i] * p >= v)
				return steps[i] * p;
		return 10 * p;
	},

	/*
	 * SVG geometry for samples [{t, voice, total, on}] over the last `span` seconds ending
	 * at `now`: polyline points for voice and total, x ranges where the profile was on, and
	 * the y-axis maximum. Pure numbers, so the view only sets attributes.
	 */
	graphGeometry: function(samples, now, span, width, height) {
		var max = 0, i, s;
		for (i = 0; i < samples.length; i++)
			max = Math.max(max, num(samples[i].total), num(samples[i].voice));
		max = this.niceMax(max);

		var x = function(t) { return Math.max(0, width - (num(now) - t) / span * width); },
		    y = function(v) { return height - Math.min(num(v), max) / max * height; },
		    voice = [], total = [], on = [], runStart = null;

		for (i = 0; i < samples.length; i++) {
			s = samples[i];
			if (num(now) - s.t > span)
				continue;
			var px = x(s.t).toFixed(1);
			voice.push(px + ',' + y(s.voice).toFixed(1));
			total.push(px + ',' + y(s.total).toFixed(1));
			if (s.on && runStart === null)
				runStart = x(s.t);
			if (!s.on && runStart !== null) {
				on.push([runStart, x(s.t)]);
				runStart = null;
			}
		}
		if (runStart !== null)
			on.push([runStart, x(samples[samples.length - 1].t)]);

		return { voice: voice.join(' '), total: total.join(' '), on: on, max: max };
	},

	/* Table rows for the active calls, in the order the daemon lists them. */
	callRows: function(calls) {
		var self = this;
		return (Array.isArray(calls) ? calls : []).map(function(c) {
			return [
				c.lan_host || '?',
				(c.far_host || '?') + (c.sip ? ' (SIP)' : ''),
				String(c.flows == null ? '?' : c.flows),
				self.formatPps(c.pps_out) + ' / ' + self.formatPps(c.pps_in),
				self.formatRate(c.kbps_out) + ' / ' + self.formatRate(c.kbps_in),
				self.formatDuration(c.duration)
			];
		});
	},

	/* 'good' | 'fair' | 'poor' for one direction of a call's `quality`, 'unknown' when
	 * no RTP was measured (never graded from missing numbers). */
	qualityGrade: function(d) {
		if (!d || !d.rtp || typeof d.mos != 'number')
			return 'unknown';
		var loss = num(d.loss_percent);
		if (d.mos < POOR.mos || loss >= POOR.loss)
			return 'poor';
		if (d.mos < FAIR.mos || loss >= FAIR.loss)
			return 'fair';
		return 'good';
	},

	/*
	 * A call's `quality` as coloured lines [{text, grade}]: the daemon's summary, graded by
	 * the worse direction, then "In: 0.4 % lost, jitter 3.0 ms, MOS 4.3" for the stream
	 * arriving from the internet and "Out:" for the one leaving (what the far end hears).
	 */
	qualityLines: function(q) {
		if (!q || !q.known)
			return [ { text: (q && q.summary) || _('quality unknown'), grade: 'unknown' } ];
		var self = this, worst = 'unknown';
		var dirs = [ [ 'ingress', _('In') ], [ 'egress', _('Out') ] ].map(function(p) {
			var d = q[p[0]], grade = self.qualityGrade(d);
			if (GRADE_ORDER[grade] > GRADE_ORDER[worst])
				worst = grade;
			if (grade == 'unknown')
				return { text: _('%s: no RTP seen').format(p[1]), grade: grade };
			return { text: _('%s: %s lost, jitter %s, MOS %s').format(p[1],
				num(d.loss_percent).toFixed(1) + ' %',
				typeof d.jitter_ms == 'number' ? d.jitter_ms.toFixed(1) + ' ms' : '-',
				d.mos.toFixed(1)), grade: grade };
		});
		return [ { text: q.summary, grade: worst } ].concat(dirs);
	},

	/* The finished calls of `recent_calls` (newest first), as [ended, LAN host, far end,
	 * duration]; the view adds each call's quality. */
	recentRows: function(recent) {
		var self = this;
		return (Array.isArray(recent) ? recent : []).map(function(c) {
			return [ self.formatClock(c.ended), c.lan_host || '?',
				(c.far_host || '?') + (c.sip ? ' (SIP)' : ''), self.formatDuration(c.duration) ];
		});
	},

	/* The last `limit` transitions, newest first, as [time, state label, reason]. */
	transitionRows: function(transitions, limit) {
		var list = Array.isArray(transitions) ? transitions.slice(-limit) : [], self = this;
		return list.reverse().map(function(tr) {
			return [self.formatClock(tr.at), self.stateBadge(tr.state).label, tr.reason || ''];
		});
	},

	/* How calls are being found: status.observer (the tc-BPF header observer) as one
	 * line; without it detection runs on conntrack rates alone. */
	detectionLine: function(observer) {
		if (observer && observer.state == 'on')
			return _('Call detection: conntrack rates and RTP/STUN packet headers (%d flows with headers on %s)')
				.format(observer.flows || 0, observer.device || '?');
		return _('Call detection: conntrack rates only (packet headers off: %s)')
			.format((observer && observer.reason) || _('unknown'));
	},

	/* set_mode arguments for the Force on / Force off / Auto buttons. */
	modeArgs: function(mode) {
		if (mode != 'on' && mode != 'off' && mode != 'auto')
			throw new Error('mode must be on, off or auto, not ' + mode);
		return { mode: mode, expires: 0 };
	},

	/*
	 * What a `voipqos` call came back with, as rpc.js hands it over (declared without
	 * `expect`): the document, the refusal's data `{ error, status }`, a bare non-zero
	 * status, or a rejected promise's error (JSON-RPC errors from uhttpd).
	 * -> { kind: 'ok' | 'not_running' | 'failed', message }.
	 * Not running: ubus status 4 (the rpcd plugin found no daemon) or -32000 (no `voipqos`
	 * object at all: rpcd not reloaded since install, or the plugin missing).
	 */
	classifyReply: function(reply, err) {
		if (err != null) {
			var text = String(err.message || err).split(/\n/)[0];
			if (/error -32000\b/.test(text))
				return { kind: 'not_running', message: text };
			return { kind: 'failed', message: text };
		}
		if (typeof reply == 'number')
			return reply == 4 ? { kind: 'not_running', message: '' }
				: { kind: 'failed', message: 'ubus status ' + reply };
		if (reply == null || typeof reply != 'object')
			return { kind: 'failed', message: 'no answer' };
		if (reply.error != null)
			return { kind: reply.status == 4 ? 'not_running' : 'failed', message: String(reply.error) };
		return { kind: 'ok', message: '' };
	}
});
