import { createHash, createHmac } from 'node:crypto';
import canonicalize from 'canonicalize';
import type { AuditEventRecord } from './event.js';

/**
 * The hash chain, as pure functions: the service, the database verifier and the offline export
 * verifier all go through these, so they cannot disagree about what an event's hash is.
 *
 * Each tenant has one chain per UTC month (one per partition, so dropping an old month never
 * breaks the chains that remain). In commit order, event n of a month stores
 * `hash_n = SHA-256(hash_{n-1} || JCS(event_n))` — or HMAC-SHA-256 keyed with CHAIN_HMAC_SECRET —
 * where `hash_0` is the month's genesis hash and JCS is RFC 8785 canonical JSON.
 */

/** Version tag of the canonical form; part of every genesis hash. */
export const CHAIN_VERSION = 'auditgraph-chain-v1';

/**
 * The stored fields of an event that its hash covers (everything a client or the service set):
 * a record's fields with `data` as a value (parsed), and `outcome` as any text (a verifier reads
 * it from a file, unchecked).
 */
export type ChainedFields = Omit<AuditEventRecord, 'dataJson' | 'dataCanonical' | 'outcome'> & {
  outcome: string;
  /** The `data` object (parsed), or null. */
  data: unknown;
};

/**
 * An event as JSON: the object whose RFC 8785 form is hashed (and the shape of an export line).
 *
 * Its members are spelled out here by hand, and so are they in canonicalObject and envelope
 * below, on purpose: they are not derived from the table's columns, as the database's column
 * lists are. The bytes a chain hashes must never change when a column is added or renamed, or
 * every stored chain and every signed checkpoint would stop verifying.
 */
export interface CanonicalEventObject {
  id: string;
  occurredAt: string;
  receivedAt: string;
  eventType: string;
  category: string;
  action: string;
  outcome: string;
  correlationId: string;
  actor: { type: string; id: string; ip: string | null };
  resource: { type: string; id: string; name: string | null };
  parentEventId: string | null;
  severity: string | null;
  durationMs: number | null;
  errorCode: string | null;
  errorMessage: string | null;
  namespace: string | null;
  clusterId: string | null;
  traceId: string | null;
  spanId: string | null;
  data: unknown;
}

/** The canonical JSON object of an event, member by member (JCS of it is the canonical form). */
export function canonicalObject(e: ChainedFields): CanonicalEventObject {
  return {
    id: e.id,
    occurredAt: e.occurredAt.toISOString(),
    receivedAt: e.receivedAt.toISOString(),
    eventType: e.eventType,
    category: e.category,
    action: e.action,
    outcome: e.outcome,
    correlationId: e.correlationId,
    actor: { type: e.actorType, id: e.actorId, ip: e.actorIp },
    resource: { type: e.resourceType, id: e.resourceId, name: e.resourceName },
    parentEventId: e.parentEventId,
    severity: e.severity,
    durationMs: e.durationMs,
    errorCode: e.errorCode,
    errorMessage: e.errorMessage,
    namespace: e.namespace,
    clusterId: e.clusterId,
    traceId: e.traceId,
    spanId: e.spanId,
    data: e.data ?? null,
  };
}

/** JCS of a string or null: the library's own rule (JSON.stringify of a well-formed string). */
function wellFormed(v: string | null): string | null {
  if (v !== null && !v.isWellFormed()) throw new Error('Lone surrogate is not allowed');
  return v;
}

/**
 * The envelope of an event has a fixed shape of strings, integers and nulls, for which RFC 8785
 * is exactly JSON.stringify with members in UTF-16 order (the literals below are written in that
 * order). So the envelope is serialised natively in two parts, around `data` — the only
 * arbitrary JSON, which goes through the canonicalize library. A property test holds the result
 * byte for byte to the library's canonical form of the whole object; this costs a third of it.
 */
function envelope(e: Omit<ChainedFields, 'data'>, data: string): string {
  const head = JSON.stringify({
    action: wellFormed(e.action),
    actor: { id: wellFormed(e.actorId), ip: wellFormed(e.actorIp), type: wellFormed(e.actorType) },
    category: wellFormed(e.category),
    clusterId: wellFormed(e.clusterId),
    correlationId: wellFormed(e.correlationId),
  });
  const tail = JSON.stringify({
    durationMs: e.durationMs,
    errorCode: wellFormed(e.errorCode),
    errorMessage: wellFormed(e.errorMessage),
    eventType: wellFormed(e.eventType),
    id: wellFormed(e.id),
    namespace: wellFormed(e.namespace),
    occurredAt: e.occurredAt.toISOString(),
    outcome: wellFormed(e.outcome),
    parentEventId: wellFormed(e.parentEventId),
    receivedAt: e.receivedAt.toISOString(),
    resource: {
      id: wellFormed(e.resourceId),
      name: wellFormed(e.resourceName),
      type: wellFormed(e.resourceType),
    },
    severity: wellFormed(e.severity),
    spanId: wellFormed(e.spanId),
    traceId: wellFormed(e.traceId),
  });
  return `${head.slice(0, -1)},"data":${data},${tail.slice(1)}`;
}

/** RFC 8785 canonical JSON of an event's hashed fields, as UTF-8 bytes. */
export function canonicalEvent(e: ChainedFields): Buffer {
  return Buffer.from(envelope(e, canonicalize(e.data ?? null)!), 'utf8');
}

/**
 * The same, when `data` is already RFC 8785 text (validation serialises it canonically): the
 * write path then neither parses nor re-serialises it.
 */
export function canonicalEventWithData(
  e: Omit<ChainedFields, 'data'>,
  canonicalData: string | null,
): Buffer {
  return Buffer.from(envelope(e, canonicalData ?? 'null'), 'utf8');
}

/** First instant of the UTC month holding `d`: the chain an event belongs to. */
export function chainMonth(d: Date): Date {
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1));
}

/** The hash before the first event of a tenant's month. */
export function genesisHash(tenant: string, month: Date): Buffer {
  return createHash('sha256')
    .update(`${CHAIN_VERSION}\n${tenant}\n${chainMonth(month).toISOString()}`)
    .digest();
}

/** Computes chain links; keyed (HMAC-SHA-256) when a secret is given. */
export class ChainHasher {
  private readonly key: Buffer | undefined;

  constructor(secret?: string) {
    this.key = secret ? Buffer.from(secret, 'utf8') : undefined;
  }

  get keyed(): boolean {
    return this.key !== undefined;
  }

  /** `hash_n` from `hash_{n-1}` and the canonical bytes of event n. */
  link(prev: Buffer, canonical: Buffer): Buffer {
    const h = this.key ? createHmac('sha256', this.key) : createHash('sha256');
    return h.update(prev).update(canonical).digest();
  }
}

/** A stored event as the verifiers see it: its fields and its place in the chain. */
export interface ChainedRow extends ChainedFields {
  chainSeq: number | null;
  prevHash: Buffer | null;
  hash: Buffer | null;
}

/** The first link that does not hold, with what was expected and what was found. */
export interface ChainBreak {
  month: Date;
  /** Position where the break is; for a truncation, the last position a checkpoint vouches for. */
  seq: number;
  /** The event whose stored data or place does not match (null when events are missing). */
  eventId: string | null;
  occurredAt: Date | null;
  kind:
    | 'HASH_MISMATCH'
    | 'PREVIOUS_HASH_MISMATCH'
    | 'SEQUENCE_GAP'
    | 'UNHASHED'
    | 'UNCHAINED'
    | 'CHECKPOINT_MISMATCH'
    | 'TRUNCATED'
    | 'BAD_SIGNATURE';
  expectedHash: string | null;
  actualHash: string | null;
  message: string;
}

/** A checkpoint a verifier holds the chain against (its signature already checked). */
export interface CheckpointClaim {
  month: Date;
  seq: number;
  hash: Buffer;
  signedAt: Date;
}

/**
 * Walks one month's chain in order, one row at a time, in constant memory, and stops at the
 * first broken link. Used over the database (`verifyAuditChain`) and over an export file.
 */
export class MonthChainWalker {
  private expectedSeq = 1;
  private prev: Buffer;
  private readonly claims: CheckpointClaim[];
  private claimIndex = 0;
  /** Rows that passed. */
  count = 0;
  firstHash: Buffer | null = null;
  broken: ChainBreak | null = null;

  constructor(
    private readonly hasher: ChainHasher,
    tenant: string,
    readonly month: Date,
    claims: readonly CheckpointClaim[] = [],
  ) {
    this.prev = genesisHash(tenant, month);
    this.claims = [...claims].sort((a, b) => a.seq - b.seq);
  }

  /** Hash of the last verified row (the genesis hash before any). */
  get lastHash(): Buffer {
    return this.prev;
  }

  get lastSeq(): number {
    return this.expectedSeq - 1;
  }

  /** Checks the next row of the month; returns false (and sets `broken`) at the first bad link. */
  push(row: ChainedRow): boolean {
    if (this.broken) return false;
    const at = (
      kind: ChainBreak['kind'],
      message: string,
      expected: Buffer | null,
      actual: Buffer | null,
    ): false => {
      this.broken = {
        month: this.month,
        seq: row.chainSeq ?? this.expectedSeq,
        eventId: row.id,
        occurredAt: row.occurredAt,
        kind,
        expectedHash: expected ? expected.toString('hex') : null,
        actualHash: actual ? actual.toString('hex') : null,
        message,
      };
      return false;
    };
    if (row.chainSeq !== this.expectedSeq) {
      return at(
        'SEQUENCE_GAP',
        `expected position ${this.expectedSeq}, found ${row.chainSeq ?? 'none'}: events are missing or out of place`,
        null,
        null,
      );
    }
    if (!row.hash || !row.prevHash) {
      return at('UNHASHED', 'event was stored without a hash (CHAIN_HASHING=off)', null, null);
    }
    if (!row.prevHash.equals(this.prev)) {
      return at(
        'PREVIOUS_HASH_MISMATCH',
        'the stored previous hash is not the hash of the event before it',
        this.prev,
        row.prevHash,
      );
    }
    const expected = this.hasher.link(this.prev, canonicalEvent(row));
    if (!expected.equals(row.hash)) {
      return at(
        'HASH_MISMATCH',
        'the event’s content does not match its hash: it was changed after it was written',
        expected,
        row.hash,
      );
    }
    const claim = this.claims[this.claimIndex];
    if (claim && claim.seq === this.expectedSeq) {
      this.claimIndex++;
      if (!claim.hash.equals(row.hash)) {
        return at(
          'CHECKPOINT_MISMATCH',
          `the checkpoint signed at ${claim.signedAt.toISOString()} vouches for another hash at this position`,
          claim.hash,
          row.hash,
        );
      }
    }
    this.prev = row.hash;
    this.firstHash ??= row.hash;
    this.expectedSeq++;
    this.count++;
    return true;
  }

  /**
   * Called after the last row: a checkpoint vouching for a position past the end means events
   * were removed from the end of the chain.
   */
  finish(): ChainBreak | null {
    if (this.broken) return this.broken;
    const beyond = this.claims.filter((c) => c.seq > this.lastSeq);
    const last = beyond.at(-1);
    if (last) {
      this.broken = {
        month: this.month,
        seq: last.seq,
        eventId: null,
        occurredAt: null,
        kind: 'TRUNCATED',
        expectedHash: last.hash.toString('hex'),
        actualHash: this.lastSeq > 0 ? this.prev.toString('hex') : null,
        message:
          `the chain ends at position ${this.lastSeq}, but a checkpoint signed at ` +
          `${last.signedAt.toISOString()} vouches for position ${last.seq}: ` +
          `${last.seq - this.lastSeq} event(s) were removed from its end`,
      };
    }
    return this.broken;
  }
}
