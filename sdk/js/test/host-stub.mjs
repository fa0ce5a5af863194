// Stand-in for the host interface `cdrs:plugin/host@1.1.0` under plain Node.
export const logged = [];
export function log(level, msg) {
  logged.push([level, msg]);
}
export function nowMs() {
  return BigInt(Date.now());
}
