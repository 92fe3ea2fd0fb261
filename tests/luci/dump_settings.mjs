// Print the settings view's form as JSON: map, section, tabs and every option the view
// creates (widget, tab, name, title, description, datatype, default, choices, depends).
// Runs the real view code against a recording stand-in for LuCI's form; the pytest side
// (tests/test_luci_static.py) compares the result with src/voipqos/config.py OPTIONS.
import { createRequire } from 'node:module';
import { loader } from './load.mjs';

const { Class } = createRequire(import.meta.url)('./shim/luci.js');

class Option {
	constructor(section, tab, option, title, description) {
		Object.assign(this, { tab, option, title, description, choices: [], deps: [] });
		this.widget = this.constructor.name;
	}
	value(key) { this.choices.push(key); }
	depends(field, value) { this.deps.push([field, value]); }
}
class Flag extends Option {}
class Value extends Option {}
class ListValue extends Option {}
class DynamicList extends Option {}

class NamedSection {
	constructor(map, name, type) { Object.assign(this, { name, type, tabs: [], children: [] }); }
	tab(name, title) { this.tabs.push([name, title]); }
	taboption(tab, Cls, ...rest) {
		const o = new Cls(this, tab, ...rest);
		this.children.push(o);
		return o;
	}
}

class FormMap {
	constructor(config, title, description) { Object.assign(this, { config, title, description, sections: [] }); }
	section(Cls, ...rest) {
		const s = new Cls(this, ...rest);
		this.sections.push(s);
		return s;
	}
	render() { return this; }
}

const form = { Map: FormMap, NamedSection, Flag, Value, ListValue, DynamicList };
// what network.js would list on a PPPoE router (networks, then devices)
const named = (names) => names.map((n) => ({ getName: () => n }));
const network = {
	getNetworks: async () => named(['lan', 'loopback', 'wan', 'wan6']),
	getDevices: async () => named(['br-lan', 'eth0', 'eth0.2', 'lo', 'pppoe-wan']),
};
const L = loader({ form, network, view: Class });
const view = await L.require('view.voipqos.settings');
const m = view.render(await view.load());
const out = {
	config: m.config,
	sections: m.sections.map((s) => ({
		name: s.name, type: s.type, tabs: s.tabs.map((t) => t[0]),
		options: s.children.map((o) => ({
			widget: o.widget, tab: o.tab, name: o.option, title: o.title, description: o.description,
			datatype: o.datatype ?? null, default: o.default ?? null, rmempty: o.rmempty ?? null,
			choices: o.choices, depends: o.deps,
		})),
	})),
};
process.stdout.write(JSON.stringify(out, null, 1) + '\n');
