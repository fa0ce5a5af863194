// Import a plugin's plugin.js under plain Node (no Wasm), resolving its
// imports as build.sh does. Usage: `const m = await loadPlugin('example-router-js')`.
import { register } from 'node:module';

register(new URL('./resolve-hooks.mjs', import.meta.url));

const pluginsDir = new URL('../../../plugins/', import.meta.url);

export async function loadPlugin(name) {
  return import(new URL(`${name}/plugin.js`, pluginsDir).href);
}
