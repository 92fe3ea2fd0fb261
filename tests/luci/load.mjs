// Load LuCI-format modules in node through the shim's loader (tests/luci/shim/luci.js).
import { createRequire } from 'node:module';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
const { makeLuCI } = createRequire(import.meta.url)('./shim/luci.js');
export const RESOURCES = path.join(here, '../../luci-app/htdocs/luci-static/resources');

globalThis._ ??= (s) => s;

// modules: {name: instance} stand-ins for modules that need a browser (form, rpc, ...)
export function loader(modules = {}) {
	let L;
	L = makeLuCI({
		window: globalThis,
		document: null,
		fetchText: (name) => readFile(path.join(RESOURCES, name.replace(/\./g, '/') + '.js'), 'utf8'),
	});
	const require = L.require;
	L.require = (name) => (name in modules ? Promise.resolve(modules[name]) : require(name));
	return L;
}
