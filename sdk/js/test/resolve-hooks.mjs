// Module resolution hooks for running plugins under plain Node (tests): the
// bare specifier 'cdrs-plugin' is the SDK helper (build.sh bundles it the
// same way) and the host interface 'cdrs:plugin/host@1.1.0' is a stub that
// logs to stderr. Registered by load-plugin.mjs.
const sdk = new URL('../cdrs-plugin.js', import.meta.url).href;
const host = new URL('./host-stub.mjs', import.meta.url).href;

export async function resolve(specifier, context, next) {
  if (specifier === 'cdrs-plugin') return { url: sdk, shortCircuit: true };
  if (specifier.startsWith('cdrs:plugin/host')) return { url: host, shortCircuit: true };
  return next(specifier, context);
}
