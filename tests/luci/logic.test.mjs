// node:test unit tests of the views' logic module (luci-app/.../voipqos/logic.js).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loader } from './load.mjs';

process.env.TZ = 'UTC';
const logic = await loader().require('voipqos.logic');

test('state badges cover every daemon state', () => {
	const want = {
		off: ['Off', 'off'], watching: ['Watching', 'watching'], on: ['On: call active', 'on'],
		forced_on: ['Forced on', 'forced-on'], forced_off: ['Forced off', 'forced-off'],
	};
	for (const [state, [label, cls]] of Object.entries(want))
		assert.deepEqual(logic.stateBadge(state), { label, cls });
	assert.deepEqual(logic.stateBadge('bogus'), { label: 'Unknown', cls: 'unknown' });
	assert.deepEqual(logic.stateBadge(undefined), { label: 'Unknown', cls: 'unknown' });
});

test('durations, clock, since', () => {
	assert.equal(logic.formatDuration(0), '0 s');
	assert.equal(logic.formatDuration(42.9), '42 s');
	assert.equal(logic.formatDuration(185), '3 min 05 s');
	assert.equal(logic.formatDuration(7260), '2 h 01 min');
	assert.equal(logic.formatDuration(-5), '0 s');
	assert.equal(logic.formatDuration(null), '0 s');
	assert.equal(logic.formatClock(3600 * 13 + 62), '13:01:02');
	assert.equal(logic.formatSince(3600 * 13 + 62, 3600 * 13 + 62 + 185), 'since 13:01:02 (3 min 05 s ago)');
	assert.equal(logic.formatSince(null, 100), '');
	// a browser clock behind the router's never shows a negative age
	assert.equal(logic.formatSince(100, 90), 'since 00:01:40 (0 s ago)');
});

test('rates, packets and bytes', () => {
	// LuCI's %m (cbi.js String.prototype.format), as the shim reproduces it
	assert.equal(logic.formatRate(80), '80.00 Kbit/s');
	assert.equal(logic.formatRate(999.94), '999.94 Kbit/s');
	assert.equal(logic.formatRate(1250), '1.25 Mbit/s');
	assert.equal(logic.formatRate(undefined), '0 bit/s');
	assert.equal(logic.formatPps(50), '50.0');
	assert.equal(logic.formatBytes(512), '512 B');
	assert.equal(logic.formatBytes(1536), '1.50 KiB');
	assert.equal(logic.formatBytes(3 * 1024 * 1024), '3.00 MiB');
});

test('counter rates; unknown across resets and without time passing', () => {
	const a = { t: 10, packets: 100, bytes: 20000 }, b = { t: 12, packets: 200, bytes: 40000 };
	assert.deepEqual(logic.counterRate(a, b), { pps: 50, kbps: 80 });
	assert.equal(logic.counterRate(null, b), null);
	assert.equal(logic.counterRate(b, a), null); // counters went down: reload reset them
	assert.equal(logic.counterRate(a, { ...a }), null); // dt = 0
});

test('readCounters and graphSample: voice vs voice+other', () => {
	const doc = (vp, vb, op, ob) => ({ profile: { counters: { voice: { packets: vp, bytes: vb }, other: { packets: op, bytes: ob } } } });
	const r1 = logic.readCounters(doc(0, 0, 0, 0), 1), r2 = logic.readCounters(doc(50, 10000, 50, 115000), 2);
	assert.deepEqual(r2.total, { t: 2, packets: 100, bytes: 125000 });
	assert.deepEqual(logic.graphSample(r1, r2, true), { t: 2, voice: 80, total: 1000, on: true });
	assert.deepEqual(logic.graphSample(null, r1, false), { t: 1, voice: 0, total: 0, on: false });
	// the WAN device's traffic, when reported, is the total (also while the profile is off)
	const dev = { traffic: { rx_bytes: 1000, tx_bytes: 500, rx_packets: 3, tx_packets: 2 } };
	assert.deepEqual(logic.readCounters(dev, 7).total, { t: 7, packets: 5, bytes: 1500 });
	// a status without a profile section (daemon starting) reads as zeros
	assert.deepEqual(logic.readCounters({}, 5).voice, { t: 5, packets: 0, bytes: 0 });
});

test('ring buffer keeps the newest `capacity` items in order', () => {
	const rb = new logic.RingBuffer(3);
	assert.deepEqual(rb.toArray(), []);
	assert.equal(rb.last(), null);
	for (let i = 1; i <= 7; i++)
		rb.push(i);
	assert.deepEqual(rb.toArray(), [5, 6, 7]);
	assert.equal(rb.length, 3);
	assert.equal(rb.last(), 7);
	rb.clear();
	assert.deepEqual(rb.toArray(), []);
});

test('ring buffer stays bounded over a day of 1 s polls (property)', () => {
	const rb = new logic.RingBuffer(181);
	let seed = 7;
	for (let i = 0; i < 86400; i++) {
		seed = (seed * 1103515245 + 12345) % 2147483648;
		rb.push({ t: i, voice: seed % 100, total: seed % 1000, on: !!(seed & 1) });
	}
	assert.equal(rb.length, 181);
	assert.equal(rb.items.length, 181);
	const ts = rb.toArray().map((s) => s.t);
	assert.deepEqual(ts, Array.from({ length: 181 }, (_, k) => 86400 - 181 + k));
});

test('niceMax rounds up to 1-2-5 steps', () => {
	assert.equal(logic.niceMax(0), 10);
	assert.equal(logic.niceMax(11), 20);
	assert.equal(logic.niceMax(160), 200);
	assert.equal(logic.niceMax(4100), 5000);
	assert.equal(logic.niceMax(5000), 5000);
	assert.equal(logic.niceMax(9000), 10000);
	for (let v = 1; v < 1e7; v *= 1.37)
		assert.ok(logic.niceMax(v) >= v && logic.niceMax(v) < 2.5 * Math.max(10, v));
});

test('graph geometry: points inside the box, on-bands, old samples dropped', () => {
	const samples = [
		{ t: 0, voice: 0, total: 0, on: false },     // older than the span: dropped
		{ t: 100, voice: 0, total: 50, on: false },
		{ t: 110, voice: 80, total: 150, on: true },
		{ t: 120, voice: 80, total: 150, on: true },
		{ t: 130, voice: 0, total: 60, on: false },
		{ t: 140, voice: 80, total: 90, on: true },
	];
	const g = logic.graphGeometry(samples, 140, 60, 600, 100);
	assert.equal(g.max, 200);
	assert.equal(g.total.split(' ').length, 5);
	assert.equal(g.total.split(' ')[0], '200.0,75.0');
	assert.equal(g.voice.split(' ')[4], '600.0,60.0');
	assert.deepEqual(g.on, [[300, 500], [600, 600]]);
	for (const p of (g.voice + ' ' + g.total).split(' ')) {
		const [x, y] = p.split(',').map(Number);
		assert.ok(x >= 0 && x <= 600 && y >= 0 && y <= 100, p);
	}
	assert.deepEqual(logic.graphGeometry([], 0, 60, 600, 100), { voice: '', total: '', on: [], max: 10 });
});

test('call and transition rows', () => {
	const rows = logic.callRows([{ lan_host: '192.168.1.20', far_host: '203.0.113.9', flows: 2, sip: true,
		pps_out: 50, pps_in: 49.5, kbps_out: 80, kbps_in: 79.2, duration: 42 }]);
	assert.deepEqual(rows, [['192.168.1.20', '203.0.113.9 (SIP)', '2', '50.0 / 49.5',
		'80.00 Kbit/s / 79.20 Kbit/s', '42 s']]);
	assert.deepEqual(logic.callRows(undefined), []);
	const tr = [1, 2, 3].map((i) => ({ at: i, state: i % 2 ? 'on' : 'watching', reason: 'r' + i }));
	assert.deepEqual(logic.transitionRows(tr, 2), [['00:00:03', 'On: call active', 'r3'],
		['00:00:02', 'Watching', 'r2']]);
	assert.deepEqual(tr.map((t) => t.at), [1, 2, 3]); // input untouched
	assert.deepEqual(logic.transitionRows(null, 5), []);
});

test('call quality: graded by MOS and loss, unknown never graded from zeros', () => {
	const d = (mos, loss, jitter = 2) => ({ rtp: true, mos, loss_percent: loss, jitter_ms: jitter });
	assert.equal(logic.qualityGrade(d(4.4, 0)), 'good');
	assert.equal(logic.qualityGrade(d(4.2, 1)), 'fair');   // 1 % lost: audible
	assert.equal(logic.qualityGrade(d(3.9, 0.5)), 'fair');
	assert.equal(logic.qualityGrade(d(4.1, 3)), 'poor');
	assert.equal(logic.qualityGrade(d(3.5, 0)), 'poor');
	assert.equal(logic.qualityGrade({ rtp: false, mos: null, loss_percent: null }), 'unknown');
	assert.equal(logic.qualityGrade(null), 'unknown');
	const q = { known: true, summary: 'losing 5 % on the internet side',
		ingress: d(3.9, 5, 4), egress: { ...d(4.39, 0), jitter_ms: null } };
	assert.deepEqual(logic.qualityLines(q), [
		{ text: 'losing 5 % on the internet side', grade: 'poor' },
		{ text: 'In: 5.0 % lost, jitter 4.0 ms, MOS 3.9', grade: 'poor' },
		{ text: 'Out: 0.0 % lost, jitter -, MOS 4.4', grade: 'good' }]);
	assert.deepEqual(logic.qualityLines({ ...q, egress: { rtp: false, mos: null } })[2],
		{ text: 'Out: no RTP seen', grade: 'unknown' });
	assert.deepEqual(logic.qualityLines({ known: false, summary: 'quality unknown (no RTP seen)' }),
		[{ text: 'quality unknown (no RTP seen)', grade: 'unknown' }]);
	assert.deepEqual(logic.qualityLines(undefined), [{ text: 'quality unknown', grade: 'unknown' }]);
	assert.deepEqual(logic.recentRows([{ ended: 3600 * 13 + 62, lan_host: '192.168.1.20',
		far_host: '203.0.113.9', sip: true, duration: 192.4 }]),
	[['13:01:02', '192.168.1.20', '203.0.113.9 (SIP)', '3 min 12 s']]);
	assert.deepEqual(logic.recentRows(null), []);
});

test('mode buttons send set_mode arguments the daemon accepts', () => {
	assert.deepEqual(logic.modeArgs('on'), { mode: 'on', expires: 0 });
	assert.deepEqual(logic.modeArgs('auto'), { mode: 'auto', expires: 0 });
	assert.throws(() => logic.modeArgs('maybe'));
});

test('replies tell not running from a failed call', () => {
	assert.deepEqual(logic.classifyReply({ state: 'on' }), { kind: 'ok', message: '' });
	// the rpcd plugin without a daemon; uhttpd without the plugin (tests/data/transcripts)
	assert.equal(logic.classifyReply({ error: 'the voipqos daemon is not running', status: 4 }).kind, 'not_running');
	assert.equal(logic.classifyReply(null, new Error('RPC call to voipqos/status failed with error -32000: Object not found')).kind, 'not_running');
	assert.equal(logic.classifyReply(4).kind, 'not_running');
	assert.deepEqual(logic.classifyReply({ error: 'set_mode: mode must be on, off or auto', status: 2 }),
		{ kind: 'failed', message: 'set_mode: mode must be on, off or auto' });
	assert.deepEqual(logic.classifyReply(2), { kind: 'failed', message: 'ubus status 2' });
	assert.equal(logic.classifyReply(null, new Error('RPC call to voipqos/status failed with error -32002: Access denied')).kind, 'failed');
	assert.equal(logic.classifyReply(undefined).kind, 'failed');
});

test('detection line: headers on, off with the reason, status without the field', () => {
	assert.equal(logic.detectionLine({ state: 'on', device: 'wan', flows: 3 }),
		'Call detection: conntrack rates and RTP/STUN packet headers (3 flows with headers on wan)');
	assert.equal(logic.detectionLine({ state: 'off', reason: 'header_evidence is 0' }),
		'Call detection: conntrack rates only (packet headers off: header_evidence is 0)');
	assert.equal(logic.detectionLine(undefined),
		'Call detection: conntrack rates only (packet headers off: unknown)');
});
