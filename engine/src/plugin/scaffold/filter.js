// {{name}}: drops records without a key, keeps the rest.
import { Verdict, records } from 'cdrs-plugin';

export function init(config) {}

export function filter(batch) {
  return records(batch).map((r) => (r.key !== null ? Verdict.keep() : Verdict.drop()));
}
