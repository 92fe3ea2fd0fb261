// Record what LuCI's real validation.js says about WAN interface values, for
// tests/test_luci_static.py to replay against the daemon's parser (config.py). Needs the
// LuCI sources (not in this repository):
//   node tests/record_luci_datatypes.mjs LUCI_DIR > tests/data/luci_datatypes.json
// LUCI_DIR is a checkout of openwrt/luci (e.g. /work/upstream/luci).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const luci = process.argv[2];
const file = path.join(luci, 'modules/luci-base/htdocs/luci-static/resources/validation.js');
const { Class } = createRequire(import.meta.url)('./luci/shim/luci.js');
globalThis._ = (s) => s;
globalThis.findParent = () => true; // the field is attached: validate() runs
const L = { raise: (type, fmt, ...a) => { throw new Error(`${type}: ${fmt} ${a}`); } };
const body = readFileSync(file, 'utf8').replace(/^'(use strict|require [^']+)';$/gm, '');
const factory = new (Function('L', 'baseclass', body)(L, Class))();

function valid(type, value) {
	const field = { value, classList: { add() {}, remove() {} }, setAttribute() {},
		removeAttribute() {}, dispatchEvent() {} };
	return factory.create(field, type, false).validate() === true;
}

const datatype = 'or(uciname,netdevname)';
const values = ['wan', 'wan6', 'WAN_2', 'lan', '@wan', 'pppoe-wan', 'eth0.2', 'eth1', 'br-lan',
	'wlan0-1', 'lan1.100', 'ifb4eth0', 'abcdefghijklmno', 'abcdefghijklmnop', 'very_long_uci_name_xyz',
	'eth0:1', 'a/b', 'a b', 'a%b', '.', '..', '-', 'a#b', 'é', 'a\u00a0b', 'eth0\t', ''];
const verdicts = Object.fromEntries(values.map((v) => [v, valid(datatype, v)]));
const commit = (() => { try { return readFileSync(path.join(luci, '../luci.commit'), 'utf8').trim(); } catch { return null; } })();
process.stdout.write(JSON.stringify({ source: 'openwrt/luci validation.js', commit, datatype, verdicts }, null, 1) + '\n');
