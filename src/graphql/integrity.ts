import { createGraphQLError } from 'graphql-yoga';
import type { ChainBreak } from '../domain/chain.js';
import type { Checkpoint, TrustedKey } from '../domain/checkpoint.js';
import { ValidationError } from '../domain/errors.js';
import type { ChainVerification, MonthVerification } from '../integrity/chain-auditor.js';
import { builder } from './builder.js';
import { knownTenant, requireTenant } from './context.js';

/** Widest range one verification may cover (it re-reads whole months). */
const MAX_RANGE_MS = 10 * 366 * 86_400_000;

/** Checks a verification range; throws ValidationError. */
export function checkVerifyRange(from: Date, to: Date): void {
  if (from.getTime() >= to.getTime()) {
    throw ValidationError.single('to', 'must be later than from');
  }
  if (to.getTime() - from.getTime() > MAX_RANGE_MS) {
    throw ValidationError.single('to', 'the range may span at most 10 years');
  }
}

interface ChainKey {
  algorithm: string;
  keyId: string;
  publicKeyPem: string;
  keyed: boolean;
}

const AuditChainKey = builder.objectRef<ChainKey>('AuditChainKey').implement({
  description:
    'How this deployment chains and signs: give publicKeyPem to whoever verifies exports offline.',
  fields: (t) => ({
    algorithm: t.exposeString('algorithm', { description: 'Checkpoint signatures: Ed25519.' }),
    keyId: t.exposeString('keyId', {
      description: 'SHA-256 (hex) of the public key (SPKI DER); every checkpoint names it.',
    }),
    publicKeyPem: t.exposeString('publicKeyPem', { description: 'SPKI PEM.' }),
    keyed: t.exposeBoolean('keyed', {
      description:
        'True when event hashes are HMAC-SHA-256 with CHAIN_HMAC_SECRET (verifying needs it).',
    }),
    hashAlgorithm: t.string({
      resolve: (k) => (k.keyed ? 'HMAC-SHA-256' : 'SHA-256'),
    }),
    canonicalization: t.string({ resolve: () => 'RFC 8785 (JCS)' }),
  }),
});

export const AuditCheckpoint = builder.objectRef<Checkpoint>('AuditCheckpoint').implement({
  description:
    'A signed statement: this month’s chain had `hash` at position `seq` when it was signed. ' +
    'The signature covers the RFC 8785 canonical JSON of ' +
    '{ v, tenant, month, seq, hash, signedAt } (v = "auditgraph-chain-v1").',
  fields: (t) => ({
    tenant: t.exposeString('tenant'),
    month: t.expose('month', { type: 'DateTime' }),
    seq: t.float({ description: 'An integer.', resolve: (c) => c.seq }),
    hash: t.string({ resolve: (c) => c.hash.toString('hex') }),
    signedAt: t.expose('signedAt', { type: 'DateTime' }),
    keyId: t.exposeString('keyId'),
    signature: t.string({
      description: 'Ed25519 signature, base64.',
      resolve: (c) => c.signature.toString('base64'),
    }),
  }),
});

const ChainBreakKind = builder.enumType('AuditChainBreakKind', {
  values: {
    HASH_MISMATCH: { description: 'The event’s content no longer matches its hash.' },
    PREVIOUS_HASH_MISMATCH: { description: 'The event does not follow the one before it.' },
    SEQUENCE_GAP: { description: 'Events are missing or out of place.' },
    UNHASHED: { description: 'Stored with CHAIN_HASHING=off.' },
    UNCHAINED: { description: 'Events in the month without a chain position.' },
    CHECKPOINT_MISMATCH: { description: 'A signed checkpoint vouches for another hash.' },
    TRUNCATED: { description: 'Events were removed from the end of the chain.' },
    BAD_SIGNATURE: { description: 'A stored checkpoint is not signed by this deployment.' },
  } as const,
});

const AuditChainBreak = builder.objectRef<ChainBreak>('AuditChainBreak').implement({
  description: 'The first link that does not hold.',
  fields: (t) => ({
    kind: t.field({ type: ChainBreakKind, resolve: (b) => b.kind }),
    month: t.expose('month', { type: 'DateTime' }),
    seq: t.float({ description: 'Chain position (an integer).', resolve: (b) => b.seq }),
    eventId: t.exposeString('eventId', { nullable: true }),
    occurredAt: t.expose('occurredAt', { type: 'DateTime', nullable: true }),
    expectedHash: t.exposeString('expectedHash', {
      nullable: true,
      description:
        'Hex: what the verifier computed from the stored data and the link before it (for a ' +
        'checkpoint break: what the signed checkpoint says).',
    }),
    actualHash: t.exposeString('actualHash', {
      nullable: true,
      description: 'Hex: what is stored.',
    }),
    message: t.exposeString('message'),
  }),
});

const MonthStatus = builder.enumType('AuditChainMonthStatus', {
  values: {
    OK: { description: 'Every link holds, up to and including every signed checkpoint.' },
    BROKEN: { description: 'See firstBreak.' },
    DROPPED: { description: 'Removed whole by retention (recorded with its final checkpoint).' },
  } as const,
});

const AuditChainMonth = builder.objectRef<MonthVerification>('AuditChainMonth').implement({
  fields: (t) => ({
    month: t.expose('month', { type: 'DateTime' }),
    status: t.field({ type: MonthStatus, resolve: (m) => m.status }),
    eventsVerified: t.exposeInt('eventsVerified'),
    lastSeq: t.float({ resolve: (m) => m.lastSeq }),
    lastHash: t.exposeString('lastHash', { nullable: true }),
    checkpoints: t.exposeInt('checkpoints', {
      description: 'Signed checkpoints the chain was held against.',
    }),
  }),
});

export const AuditChainVerification = builder
  .objectRef<ChainVerification & { elapsedMs: number }>('AuditChainVerification')
  .implement({
    fields: (t) => ({
      ok: t.exposeBoolean('ok'),
      from: t.expose('from', { type: 'DateTime' }),
      to: t.expose('to', { type: 'DateTime' }),
      eventsVerified: t.exposeInt('eventsVerified'),
      months: t.field({ type: [AuditChainMonth], resolve: (v) => v.months }),
      firstBreak: t.field({ type: AuditChainBreak, nullable: true, resolve: (v) => v.firstBreak }),
      elapsedMs: t.exposeInt('elapsedMs'),
    }),
  });

builder.queryField('auditChainKey', (t) =>
  t.field({
    type: AuditChainKey,
    description:
      'The public key that signs checkpoints now, and how events are hashed (auditChainKeys: every key, with its period).',
    authScopes: { eventsRead: true },
    resolve: (_root, _args, ctx) => {
      requireTenant(ctx);
      const { key } = ctx.services.checkpoints;
      return {
        algorithm: 'Ed25519',
        keyId: key.keyId,
        publicKeyPem: key.publicKeyPem,
        keyed: ctx.services.config.chainHmacSecret !== undefined,
      };
    },
  }),
);

const AuditChainKeyPeriod = builder.objectRef<TrustedKey>('AuditChainKeyPeriod').implement({
  description:
    'A key this deployment signs or signed checkpoints with, and the period it was trusted in: a ' +
    'checkpoint verifies when its key was trusted at its signedAt (a minute of clock slack at ' +
    'each end). Keys are rotated with npm run deployment -- rotate-checkpoint-key.',
  fields: (t) => ({
    keyId: t.exposeString('keyId', { description: 'SHA-256 (hex) of the public key (SPKI DER).' }),
    publicKeyPem: t.exposeString('publicKeyPem', { description: 'SPKI PEM.' }),
    trustedFrom: t.expose('trustedFrom', { type: 'DateTime' }),
    retiredAt: t.expose('retiredAt', {
      type: 'DateTime',
      nullable: true,
      description: 'Null for the current key.',
    }),
    endorsedBy: t.exposeString('endorsedBy', {
      nullable: true,
      description:
        'The key that replaced this one, and signed its period (null for the current key).',
    }),
    endorsement: t.string({
      nullable: true,
      description:
        'Base64 Ed25519 signature by endorsedBy over the RFC 8785 canonical JSON of ' +
        '{ v: "auditgraph-key-v1", keyId, publicKey, trustedFrom, retiredAt, successor }.',
      resolve: (k) => k.endorsement?.toString('base64') ?? null,
    }),
  }),
});

builder.queryField('auditChainKeys', (t) =>
  t.field({
    type: [AuditChainKeyPeriod],
    description:
      'The checkpoint keys this deployment vouches for, oldest first, each with its period and ' +
      'its successor’s endorsement: what the offline verifier takes as --keys (the JSON of this ' +
      'list) to verify exports across rotations, trusting the newest key and, through the ' +
      'endorsements, the ones before it.',
    authScopes: { eventsRead: true },
    resolve: (_root, _args, ctx) => {
      requireTenant(ctx);
      return ctx.services.checkpoints.trustedKeys();
    },
  }),
);

builder.queryField('auditCheckpoints', (t) =>
  t.field({
    type: [AuditCheckpoint],
    description: 'Signed checkpoints of the tenant’s chains, oldest first; optionally one month.',
    authScopes: { eventsRead: true },
    args: {
      month: t.arg({
        type: 'DateTime',
        description: 'Any instant in the month (UTC); all months when omitted.',
      }),
    },
    resolve: async (_root, args, ctx) => {
      const tenant = await knownTenant(ctx);
      const month = args.month
        ? new Date(Date.UTC(args.month.getUTCFullYear(), args.month.getUTCMonth(), 1))
        : undefined;
      return ctx.services.checkpoints.list(tenant, month);
    },
  }),
);

/** What signAuditCheckpoints signed. */
const SignedAuditCheckpoints = builder
  .objectRef<{ data: Checkpoint[] }>('SignedAuditCheckpoints')
  .implement({
    fields: (t) => ({
      data: t.field({
        type: [AuditCheckpoint],
        description: 'The new checkpoints, oldest first (empty if no chain head moved).',
        resolve: (p) => p.data,
      }),
    }),
  });

builder.mutationField('signAuditCheckpoints', (t) =>
  t.field({
    type: SignedAuditCheckpoints,
    description:
      'Signs every chain head of the tenant that moved since its last checkpoint, now (they are ' +
      'also signed every CHECKPOINT_INTERVAL_MS). Returns the new checkpoints (empty if none moved).',
    authScopes: { auditAdmin: true },
    resolve: async (_root, _args, ctx) => {
      const tenant = await knownTenant(ctx);
      return { data: await ctx.services.checkpoints.checkpointTenant(tenant) };
    },
  }),
);

builder.queryField('verifyAuditChain', (t) =>
  t.field({
    type: AuditChainVerification,
    // Null when refused (the error says why): one refused run must not void the others of the
    // same request, whose work is long and already under way.
    nullable: true,
    description:
      'Re-computes the tenant’s hash chains for every month overlapping [from, to) — whole ' +
      'months, streamed in chain order in constant memory — and holds each against its signed ' +
      'checkpoints. Reports the first broken link with the event and the expected and actual ' +
      'hashes. Progress of a long run is logged. A tenant runs at most ' +
      'MAX_VERIFICATIONS_PER_TENANT at once on an instance (more: null with a LIMIT_EXCEEDED ' +
      'error); a run stops when its caller goes away.',
    authScopes: { eventsRead: true },
    args: {
      from: t.arg({ type: 'DateTime', required: true }),
      to: t.arg({ type: 'DateTime', required: true }),
    },
    resolve: async (_root, { from, to }, ctx) => {
      const tenant = requireTenant(ctx);
      checkVerifyRange(from, to);
      await ctx.services.tenants.ensure(tenant, false);
      const started = Date.now();
      try {
        const result = await ctx.services.chainAuditor.verify(tenant, from, to, {
          signal: ctx.signal,
        });
        return { ...result, elapsedMs: Date.now() - started };
      } catch (err) {
        // A caller that went away is ordinary, not a failure of the service: no one reads this
        // answer, and it is no reason for an error-level log line.
        if (ctx.signal?.aborted) {
          throw createGraphQLError('the caller went away; the verification was stopped', {
            extensions: { code: 'CLIENT_CLOSED_REQUEST' },
          });
        }
        throw err;
      }
    },
  }),
);
