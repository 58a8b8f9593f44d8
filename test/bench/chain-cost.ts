import { ChainHasher, chainMonth, genesisHash } from '../../src/domain/chain.js';
import { type AuditEventRecord, validateEvents } from '../../src/domain/event.js';
import { canonicalRecord } from '../../src/ingest/batch-writer.js';
import { makeEvent, rng } from './events.js';
import { median } from './util.js';

export interface ChainCost {
  events: number;
  repeats: number;
  /** Median over the repeats, µs per event: canonicalRecord (the writer's step before its lock). */
  canonicalUs: number;
  /** ChainHasher.link (SHA-256 of previous hash ‖ canonical bytes). */
  linkUs: number;
  /** The hex text of prev_hash and hash the writer sends to PostgreSQL. */
  hexUs: number;
  /** Sum of the three. */
  totalUs: number;
  /** Average canonical JSON size in bytes. */
  canonicalBytes: number;
}

/**
 * What hashing costs per event in this process, with no service or database: the writer's own
 * steps (src/ingest/batch-writer.ts) over records made by the service's own validation from
 * typical benchmark events — canonical JSON (computed before the lock), then under the lock the
 * SHA-256 link and the hex text of both hashes.
 */
export function measureChainCost(events: number, repeats: number, seed = 71): ChainCost {
  const random = rng(seed);
  const now = new Date();
  const records: AuditEventRecord[] = [];
  // 100 a call, as the benchmark's clients send them (one correlation id per call).
  for (let i = 0; i < events; i += 100) {
    const n = Math.min(100, events - i);
    const inputs = Array.from({ length: n }, () =>
      makeEvent(
        random,
        new Date(now.getTime() - Math.floor(random() * 5_000)),
        `cost-${seed}-${i}`,
      ),
    );
    records.push(
      ...validateEvents(inputs, {
        now,
        retentionDays: 3650,
        maxFutureSkewMs: 60_000,
        maxEvents: 100,
      }),
    );
  }
  const hasher = new ChainHasher();
  const tenant = 'bench_chain_cost';
  const canonical: Buffer[] = new Array(records.length);
  const pass = () => {
    let t = performance.now();
    for (let i = 0; i < records.length; i++) {
      canonical[i] = canonicalRecord(records[i]!);
    }
    const canonicalMs = performance.now() - t;
    t = performance.now();
    const hashes: Buffer[] = new Array(records.length);
    let prev = genesisHash(tenant, chainMonth(records[0]!.occurredAt));
    for (let i = 0; i < records.length; i++) {
      prev = hasher.link(prev, canonical[i]!);
      hashes[i] = prev;
    }
    const linkMs = performance.now() - t;
    t = performance.now();
    let chars = 0;
    for (let i = 0; i < records.length; i++) {
      chars += (i > 0 ? hashes[i - 1]! : hashes[i]!).toString('hex').length;
      chars += hashes[i]!.toString('hex').length;
    }
    const hexMs = performance.now() - t;
    if (chars !== 128 * records.length) throw new Error('hash hex of unexpected length');
    return { canonicalMs, linkMs, hexMs };
  };
  // One untimed pass, so the figures are of optimised code (as in a warm service).
  pass();
  const runs = Array.from({ length: repeats }, pass);
  const us = (ms: number[]) => (median(ms) * 1000) / records.length;
  const canonicalUs = us(runs.map((r) => r.canonicalMs));
  const linkUs = us(runs.map((r) => r.linkMs));
  const hexUs = us(runs.map((r) => r.hexMs));
  return {
    events: records.length,
    repeats,
    canonicalUs,
    linkUs,
    hexUs,
    totalUs: canonicalUs + linkUs + hexUs,
    canonicalBytes: canonical.reduce((a, b) => a + b.length, 0) / canonical.length,
  };
}
