import { randomUUID } from 'node:crypto';
import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type {
  DocumentNode,
  ExecutionArgs,
  ExecutionResult,
  FormattedExecutionResult,
  GraphQLError,
} from 'graphql';
import {
  type Context,
  type Server as GraphQLWsServer,
  handleProtocols,
  makeServer,
  type SubscribePayload,
} from 'graphql-ws';
import type { Extra } from 'graphql-ws/use/ws';
import { createGraphQLError, type YogaServerInstance } from 'graphql-yoga';
import { type WebSocket, WebSocketServer } from 'ws';
import {
  authenticateConnection,
  type Caller,
  credentialTenant,
  recheckCaller,
  watchCredential,
} from '../auth/caller.js';
import { UnauthenticatedError } from '../domain/errors.js';
import { tenantIdProblem } from '../domain/tenant.js';
import type { GraphQLContext, Services } from '../graphql/context.js';
import { withoutHttp } from '../graphql/error-mapping.js';
import { type RequestScope, requestScope, type ServerContext } from '../graphql/yoga.js';
import { asError, type Logger } from '../logger.js';
import { MessageTurns } from './message-turns.js';

/** Close code for a refused connection_init (graphql-ws' own "Forbidden"). */
const FORBIDDEN = 4403;
/** Close code for a missing, invalid, revoked or expired key (graphql-ws' "Unauthorized"). */
const UNAUTHORIZED = 4401;
/** Close code for a connection over MAX_CONNECTIONS_PER_TENANT (graphql-ws' "too many"). */
const TOO_MANY = 4429;
/** Close code for a message over its limit (RFC 6455 "Message Too Big"). */
const TOO_BIG = 1009;
/** How often an idle connection is pinged, and how long its pong may take (graphql-ws' default). */
const KEEP_ALIVE_MS = 12_000;
/**
 * Messages one connection may have waiting for their turn; past it the socket is not read
 * until they are handled (the client's sends then wait in TCP), so waiting costs bounded memory.
 */
const MAX_WAITING_MESSAGES = 64;
/** Bytes a connection may have unsent before its operations wait for the client to read them. */
const SEND_HIGH_WATER_BYTES = 64 * 1024;

export interface WebSocketOptions {
  /** The GraphQL path; upgrades anywhere else are answered 404. */
  path: string;
  /** Operations one connection may have open at once (MAX_SUBSCRIPTIONS_PER_CONNECTION). */
  maxOperationsPerConnection: number;
  /** Largest message of an acknowledged connection (MAX_REQUEST_BYTES). */
  maxPayload: number;
  /** Bytes a connection may send before it is acknowledged (WS_MAX_INIT_BYTES). */
  maxInitBytes: number;
  log: Logger;
  /** Authentication, the per-tenant connection count and the key watcher. */
  services: Services;
}

export interface WebSocketTransport {
  /** Connections open now. */
  readonly connections: number;
  /**
   * Refuses new connections, waits (at most `graceMs`) for the operations still open to send
   * their last messages — call it after the subscriptions were ended — then closes every
   * connection with 1001 and terminates those that do not close within `graceMs`.
   */
  close(graceMs?: number): Promise<void>;
}

interface ConnectionState {
  id: string;
  tenant: string | null;
  caller: Caller | null;
  openedAt: number;
  operations: number;
  /** The TCP socket under the WebSocket (its writes are gathered per turn of the loop). */
  raw: Duplex | null;
  /** Whether `raw` is corked until the next turn. */
  corked: boolean;
  /** Frees the connection's place in MAX_CONNECTIONS_PER_TENANT and stops watching its key. */
  release: (() => void) | null;
  /** Per open operation: aborted when the client completes it or the connection closes. */
  aborts: Map<string, AbortController>;
}

/** The envelop entry points carried to execute/subscribe through `rootValue` (yoga's ws example). */
interface EnvelopedRoot {
  execute: (args: ExecutionArgs) => unknown;
  subscribe: (args: ExecutionArgs) => unknown;
  scope: RequestScope;
}

/** connection_init's payload, as graphql-ws hands it over. */
type ConnectionParams = Record<string, unknown> | undefined;
/** graphql-ws' view of one connection: its payload, its open operations, its socket. */
type ConnectionContext = Context<ConnectionParams, Extra>;
/** One operation's envelop: yoga's parse, validate, execute and context for it. */
type Enveloped = ReturnType<YogaServerInstance<ServerContext, GraphQLContext>['getEnveloped']>;

/**
 * graphql-ws (`graphql-transport-ws`) on the HTTP server's own port and path. Operations run
 * through yoga's envelop (same schema, plugins, error masking and context as HTTP). The caller is
 * fixed by connection_init for the connection's life:
 * - AUTH_MODE=dev: the tenant is the payload's `tenantId`, checked with the rules of the header;
 *   a missing or invalid one closes the connection with 4403 and a reason that says why;
 * - AUTH_MODE=keys: the payload's `authorization: "Bearer <key>"`; a missing or invalid key
 *   closes with 4401, a payload that names a tenant itself with 4403. Each operation looks the
 *   key up again (its fields answer UnauthenticatedError once the key is revoked or expired), and
 *   open connections are re-checked every AUTH_RECHECK_MS and on every revocation: revoked or
 *   expired, the connection closes with 4401.
 * A tenant's connections beyond MAX_CONNECTIONS_PER_TENANT are closed with 4429.
 * Incoming messages are handled one per turn of the event loop, the connections taking turns
 * (MessageTurns): a burst of operations on one connection cannot hold up everyone else's
 * requests. What a connection is sent in one turn leaves in one write.
 */
export function attachWebSocket(
  server: Server,
  yoga: YogaServerInstance<ServerContext, GraphQLContext>,
  opts: WebSocketOptions,
): WebSocketTransport {
  const gateway = new WebSocketGateway(server, yoga, opts);
  return {
    get connections() {
      return gateway.connections;
    },
    close: (graceMs?: number) => gateway.close(graceMs),
  };
}

/**
 * The WebSocket side of one HTTP server, in the order a connection meets it: the upgrade and the
 * byte limit before connection_ack (`onUpgrade`, `limitBeforeAck`); connection_init, where the
 * caller, its tenant and its place under MAX_CONNECTIONS_PER_TENANT are settled (`admit`); each
 * operation's authorisation, parsing and validation (`startOperation`); the socket's keep-alive,
 * batched writes and message turns (`onConnection`); its end (`ended`); and shutdown (`close`).
 */
class WebSocketGateway {
  private readonly log: Logger;
  private readonly wss: WebSocketServer;
  private readonly gql: GraphQLWsServer<Extra>;
  /** Each socket's own bookkeeping, made the first time it is asked for. */
  private readonly states = new WeakMap<WebSocket, ConnectionState>();
  /** Acknowledged connections not yet closed (their operations are waited for at shutdown). */
  private readonly open = new Set<ConnectionContext>();
  private readonly turns = new MessageTurns(MAX_WAITING_MESSAGES);
  /** Set by `close`: new upgrades are refused from then on. */
  private closing: Promise<void> | undefined;

  constructor(
    private readonly server: Server,
    private readonly yoga: YogaServerInstance<ServerContext, GraphQLContext>,
    private readonly opts: WebSocketOptions,
  ) {
    this.log = opts.log;
    // Without maxPayload, `ws` buffers messages of up to 100 MiB, whatever MAX_REQUEST_BYTES says.
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: opts.maxPayload,
      handleProtocols,
    });
    server.on('upgrade', this.onUpgrade);
    this.gql = makeServer<ConnectionParams, Extra>({
      execute: (args) => run(args, 'execute'),
      subscribe: (args) => run(args, 'subscribe'),
      onNext: (_ctx, _id, _payload, _args, result) => withoutHttpExtensions(result),
      onConnect: (ctx) => this.admit(ctx),
      onSubscribe: (ctx, id, payload) => this.startOperation(ctx, id, payload),
      onComplete: (ctx, id) => this.completeOperation(ctx, id),
      onClose: (ctx, code, reason) => this.ended(ctx, code, reason),
    });
    this.wss.on('connection', (socket: WebSocket, request: IncomingMessage) =>
      this.onConnection(socket, request),
    );
  }

  /** Connections open now. */
  get connections(): number {
    return this.wss.clients.size;
  }

  private stateOf(socket: WebSocket): ConnectionState {
    let s = this.states.get(socket);
    if (!s) {
      s = {
        id: randomUUID(),
        tenant: null,
        caller: null,
        openedAt: Date.now(),
        operations: 0,
        raw: null,
        corked: false,
        release: null,
        aborts: new Map(),
      };
      this.states.set(socket, s);
    }
    return s;
  }

  /** The HTTP server's `upgrade` listener (a property, so `close` can take it off again). */
  private readonly onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== this.opts.path) return refuseUpgrade(socket, 404, 'Not Found');
    if (this.closing) return refuseUpgrade(socket, 503, 'Service Unavailable');
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      this.stateOf(ws).raw = socket;
      this.limitBeforeAck(ws, socket, head.length);
      // Most socket errors are a client's doing (a message over MAX_REQUEST_BYTES, which `ws` has
      // already answered with 1009): logged, and the connection closed.
      ws.on('error', (err: Error & { code?: string }) => {
        this.log.info({ connection: this.stateOf(ws).id, err, code: err.code }, 'websocket error');
        if (ws.readyState === ws.OPEN) ws.close(1011, 'Internal server error');
      });
      this.wss.emit('connection', ws, req);
    });
  };

  /**
   * Until a connection is acknowledged (its key checked) it may send at most `maxInitBytes`,
   * counted as they arrive on the socket: an anonymous client cannot make the service buffer and
   * parse a connection_init of MAX_REQUEST_BYTES. Past the limit the connection is closed with
   * 1009 and whatever else it sends is discarded unread.
   */
  private limitBeforeAck(ws: WebSocket, socket: Duplex, received: number): void {
    const { maxInitBytes } = this.opts;
    const onData = (chunk: Buffer) => {
      if (this.stateOf(ws).caller) {
        socket.off('data', onData);
        return;
      }
      received += chunk.length;
      if (received <= maxInitBytes) return;
      socket.off('data', onData);
      this.log.info(
        { connection: this.stateOf(ws).id, bytes: received, limit: maxInitBytes },
        'websocket refused: too much before connection_ack',
      );
      // `ws` would go on reading the message: stop feeding it and drop what still arrives.
      socket.removeAllListeners('data');
      socket.resume();
      ws.close(
        TOO_BIG,
        `Message Too Big: at most ${maxInitBytes} bytes before connection_ack (WS_MAX_INIT_BYTES)`,
      );
      socket.end();
      setTimeout(() => socket.destroy(), 1_000).unref();
    };
    if (received > maxInitBytes) onData(Buffer.alloc(0));
    else socket.on('data', onData);
  }

  /**
   * connection_init: authenticates the payload, settles the tenant, takes a place under
   * MAX_CONNECTIONS_PER_TENANT and watches the key. Answers the connection_ack payload, or false
   * once the socket has been closed with the code and reason that say why.
   */
  private async admit(ctx: ConnectionContext): Promise<Record<string, unknown> | false> {
    const socket = ctx.extra.socket;
    const state = this.stateOf(socket);
    let caller: Caller;
    try {
      caller = await authenticateConnection(this.opts.services, ctx.connectionParams);
    } catch (err) {
      this.log.error(
        { err: asError(err), connection: state.id },
        'websocket authentication failed',
      );
      return this.refuse(socket, 1011, 'Internal error: authentication failed, try again');
    }
    if (caller.kind === 'refused') {
      const unauthenticated = caller.error instanceof UnauthenticatedError;
      return this.refuse(
        socket,
        unauthenticated ? UNAUTHORIZED : FORBIDDEN,
        `${unauthenticated ? 'Unauthorized' : 'Forbidden'}: ${caller.error.message}`,
      );
    }
    const claim = tenantOf(caller);
    if ('problem' in claim) return this.refuse(socket, FORBIDDEN, `Forbidden: ${claim.problem}`);
    const { tenant } = claim;
    const release = this.takePlace(socket, caller, tenant);
    if (!release) {
      return this.refuse(
        socket,
        TOO_MANY,
        `Too many connections: at most ${this.opts.services.connections.max} per tenant ` +
          '(MAX_CONNECTIONS_PER_TENANT)',
      );
    }
    state.release = release;
    // The socket may have gone while we authenticated: onClose has run already then.
    if (socket.readyState !== socket.OPEN) {
      state.release();
      return false;
    }
    state.tenant = tenant;
    state.caller = caller;
    this.open.add(ctx);
    this.log.info({ connection: state.id, tenant }, 'websocket connected');
    return caller.kind === 'dev' ? { tenantId: tenant } : { tenantId: credentialTenant(caller) };
  }

  /** Closes a connection refused at connection_init, logging why; answers graphql-ws' false. */
  private refuse(socket: WebSocket, code: number, reason: string): false {
    this.log.info({ connection: this.stateOf(socket).id, code, reason }, 'websocket refused');
    // Closing first makes this the close reason the client sees (graphql-ws' own
    // "Forbidden" that follows is ignored by an already closing socket).
    socket.close(code, reason.slice(0, 123));
    return false;
  }

  /**
   * Takes the connection's place under MAX_CONNECTIONS_PER_TENANT and, for an API key, closes the
   * connection with 4401 when the key is revoked or expires. Answers what gives both back, or
   * null when the tenant has no place left.
   */
  private takePlace(
    socket: WebSocket,
    caller: Exclude<Caller, { kind: 'refused' }>,
    tenant: string,
  ): (() => void) | null {
    const releaseSlot = this.opts.services.connections.acquire(tenant);
    if (!releaseSlot) return null;
    // Its subscriptions end first, each with SubscriptionInterruptedError UNAUTHENTICATED (see
    // graphql/subscriptions.ts); a token's connection closes a moment later, so those last
    // messages go out before the close.
    const unwatch = watchCredential(caller, this.opts.services.keyWatcher, (err) => {
      this.log.info(
        { connection: this.stateOf(socket).id, reason: err.message },
        caller.kind === 'key' ? 'websocket key revoked' : 'websocket token expired',
      );
      const close = () => socket.close(UNAUTHORIZED, `Unauthorized: ${err.message}`.slice(0, 123));
      if (caller.kind === 'token') setTimeout(close, 1_000).unref();
      else close();
    });
    return () => {
      releaseSlot();
      unwatch?.();
    };
  }

  /**
   * `subscribe`: checks the connection's operation limit and its caller again, then parses and
   * validates the operation through yoga's envelop. Answers the execution arguments, or the
   * errors graphql-ws sends back as the operation's `error` message.
   */
  private async startOperation(
    ctx: ConnectionContext,
    id: string,
    payload: SubscribePayload,
  ): Promise<ExecutionArgs | readonly GraphQLError[]> {
    const state = this.stateOf(ctx.extra.socket);
    // graphql-ws registers the operation before calling us, so this one is counted.
    if (Object.keys(ctx.subscriptions).length > this.opts.maxOperationsPerConnection) {
      return [tooManyOperations(this.opts.maxOperationsPerConnection)];
    }
    const requestId = randomUUID();
    if (!state.caller) return [createGraphQLError('the connection is not initialised')];
    // Every operation is authorised anew: a key revoked or expired since connection_init is
    // each field's UnauthenticatedError from its next operation on, not only at the re-check.
    let caller: Caller;
    try {
      caller = await recheckCaller(this.opts.services, state.caller);
    } catch (err) {
      this.log.warn({ connection: state.id, err: asError(err) }, 'api key re-check failed');
      return [
        createGraphQLError('the API key could not be checked; retry', {
          extensions: { code: 'SERVICE_UNAVAILABLE' },
        }),
      ];
    }
    const abort = new AbortController();
    state.aborts.get(id)?.abort();
    state.aborts.set(id, abort);
    const enveloped = this.yoga.getEnveloped({
      req: ctx.extra.request,
      connectionCaller: caller,
      operationSignal: abort.signal,
      requestId,
      params: payload,
    });
    const parsed = parseAndValidate(enveloped, payload.query);
    if ('errors' in parsed) {
      state.aborts.delete(id);
      return parsed.errors;
    }
    const root: EnvelopedRoot = {
      execute: enveloped.execute as EnvelopedRoot['execute'],
      subscribe: enveloped.subscribe as EnvelopedRoot['subscribe'],
      scope: { requestId },
    };
    state.operations++;
    this.log.debug(
      { connection: state.id, operation: id, requestId, operationName: payload.operationName },
      'websocket operation started',
    );
    return {
      schema: enveloped.schema,
      document: parsed.document,
      operationName: payload.operationName,
      variableValues: payload.variables,
      contextValue: await enveloped.contextFactory(),
      rootValue: root,
    };
  }

  /**
   * The client's `complete`, or the operation's own end: work still running for it (a chain
   * verification, say) stops.
   */
  private completeOperation(ctx: ConnectionContext, id: string): void {
    const state = this.stateOf(ctx.extra.socket);
    state.aborts.get(id)?.abort();
    state.aborts.delete(id);
    this.log.debug({ connection: state.id, operation: id }, 'websocket operation completed');
  }

  /**
   * The connection's end, whoever closed it: its operations stop, its place and key watch are
   * given back, and an acknowledged connection logs what it did.
   */
  private ended(ctx: ConnectionContext, code?: number, reason?: string): void {
    this.open.delete(ctx);
    const state = this.stateOf(ctx.extra.socket);
    for (const abort of state.aborts.values()) abort.abort();
    state.aborts.clear();
    state.release?.();
    state.release = null;
    if (state.tenant === null) return; // refused (logged) or never initialised
    this.log.info(
      {
        connection: state.id,
        tenant: state.tenant,
        code,
        reason: reason || undefined,
        operations: state.operations,
        durationMs: Date.now() - state.openedAt,
      },
      'websocket closed',
    );
  }

  /**
   * A socket past the upgrade: kept alive, handed to graphql-ws with batched writes and message
   * turns. Its `close` event is the last thing it emits: this ends the connection once and for all.
   */
  private onConnection(socket: WebSocket, request: IncomingMessage): void {
    const stopKeepAlive = keepAlive(socket);
    const state = this.stateOf(socket);
    const closed = this.gql.opened(
      {
        protocol: socket.protocol,
        send: (data) => sendInTurn(socket, state, data),
        close: (code, reason) => socket.close(code, reason),
        onMessage: (handle) => this.takeTurns(socket, handle),
      },
      { socket, request },
    );
    socket.once('close', (code, reason) => {
      stopKeepAlive();
      void closed(code, String(reason));
    });
  }

  /**
   * Hands the socket's messages to graphql-ws through its lane of MessageTurns, and stops reading
   * the socket while too many wait. A message whose handling throws closes the connection.
   */
  private takeTurns(socket: WebSocket, handle: (data: string) => Promise<void>): void {
    const lane = this.turns.lane(
      async (data) => {
        try {
          await handle(data);
        } catch (err) {
          this.log.error(
            { connection: this.stateOf(socket).id, err: asError(err) },
            'websocket message handling failed',
          );
          if (socket.readyState === socket.OPEN) socket.close(1011, 'Internal server error');
        }
      },
      (waiting) => (waiting ? socket.pause() : socket.resume()),
    );
    socket.on('message', (data: Buffer) => lane.push(String(data)));
    socket.once('close', () => lane.close());
  }

  /** Operations still open on every acknowledged connection. */
  private openOperations(): number {
    let n = 0;
    for (const ctx of this.open) n += Object.keys(ctx.subscriptions).length;
    return n;
  }

  /** See WebSocketTransport.close; every call after the first answers the first one's promise. */
  close(graceMs = 2_000): Promise<void> {
    this.closing ??= this.shutDown(graceMs);
    return this.closing;
  }

  private async shutDown(graceMs: number): Promise<void> {
    const deadline = Date.now() + graceMs;
    // Completed operations send their last message and `complete`, then leave the map.
    while (this.openOperations() > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
    const left = this.openOperations();
    if (left > 0)
      this.log.warn({ operations: left }, 'websocket operations still open at shutdown');
    for (const socket of this.wss.clients) socket.close(1001, 'server shutting down');
    const terminate = setTimeout(
      () => {
        for (const socket of this.wss.clients) socket.terminate();
      },
      Math.max(100, deadline - Date.now()),
    );
    try {
      this.wss.removeAllListeners('connection');
      await new Promise<void>((resolve, reject) =>
        this.wss.close((err) => (err ? reject(err) : resolve())),
      );
    } finally {
      clearTimeout(terminate);
      this.server.off('upgrade', this.onUpgrade);
    }
  }
}

/**
 * Pings the socket every KEEP_ALIVE_MS while it is open and terminates it when a pong takes
 * longer than that. Answers what stops the timers.
 */
function keepAlive(socket: WebSocket): () => void {
  let pongWait: NodeJS.Timeout | undefined;
  const timer = setInterval(() => {
    if (socket.readyState !== socket.OPEN || pongWait) return;
    pongWait = setTimeout(() => socket.terminate(), KEEP_ALIVE_MS);
    socket.ping();
  }, KEEP_ALIVE_MS);
  socket.on('pong', () => {
    clearTimeout(pongWait);
    pongWait = undefined;
  });
  return () => {
    clearInterval(timer);
    clearTimeout(pongWait);
  };
}

/**
 * graphql-ws' `send`: every message of this turn of the loop leaves in one write, and the
 * operation waits for the client only once SEND_HIGH_WATER_BYTES are unsent.
 */
function sendInTurn(socket: WebSocket, state: ConnectionState, data: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (socket.readyState !== socket.OPEN) return resolve();
    // Every message of this turn of the loop leaves in one write: a system call per
    // message (an operation's result and its `complete`, a burst of operations
    // answering at once) costs more than the messages' execution.
    if (state.raw && !state.corked) {
      const raw = state.raw;
      state.corked = true;
      raw.cork();
      setImmediate(() => {
        state.corked = false;
        raw.uncork();
      });
    }
    // Below the high-water mark the operation goes on at once, as a stream's write()
    // that returns true; past it, it waits until the client has taken this message, so
    // a slow client holds its messages in its subscriptions' bounded queues, not here.
    const wait = socket.bufferedAmount >= SEND_HIGH_WATER_BYTES;
    socket.send(data, (err) => {
      if (!wait) return; // a failed write closes the socket: its operations end then
      if (err) reject(err);
      else resolve();
    });
    if (!wait) resolve();
  });
}

/**
 * graphql-ws' `onNext`: a result whose errors carry yoga's `http` extension is sent without it
 * (a status code means nothing on a WebSocket); any other result is sent as it is (undefined).
 */
function withoutHttpExtensions(result: ExecutionResult): FormattedExecutionResult | undefined {
  return result.errors?.some((e) => e.extensions && 'http' in e.extensions)
    ? {
        ...result,
        errors: result.errors.map((e) => {
          const json = e.toJSON();
          return { ...json, extensions: withoutHttp(json.extensions) };
        }),
      }
    : undefined;
}

/**
 * The tenant an authenticated caller's connection counts against, or why a dev caller has none:
 * AUTH_MODE=dev takes the payload's `tenantId`, checked with the rules of the header.
 */
function tenantOf(
  caller: Exclude<Caller, { kind: 'refused' }>,
): { tenant: string } | { problem: string } {
  if (caller.kind === 'dev') {
    const claim = caller.tenantClaim;
    const invalid = claim ? tenantIdProblem(claim) : null;
    const problem = !claim
      ? 'the connection_init payload must carry tenantId (AUTH_MODE=dev)'
      : invalid && `tenantId ${invalid}`;
    if (problem) return { problem };
    return { tenant: claim! };
  }
  // A platform key may connect; its subscriptions answer ForbiddenError (no tenant).
  return { tenant: credentialTenant(caller) ?? '(platform)' };
}

/** The error of an operation over MAX_SUBSCRIPTIONS_PER_CONNECTION. */
function tooManyOperations(max: number): GraphQLError {
  // graphql-ws tells errors from other values with `instanceof GraphQLError`: build them
  // with the graphql instance the libraries resolve (tests may load a second copy).
  return createGraphQLError(
    `at most ${max} operations may be open at once on one ` +
      'connection (MAX_SUBSCRIPTIONS_PER_CONNECTION); complete one or open another connection',
    { extensions: { code: 'TOO_MANY_SUBSCRIPTIONS' } },
  );
}

/** The operation's document, or the parse or validation errors graphql-ws sends back. */
function parseAndValidate(
  enveloped: Enveloped,
  query: string,
): { document: DocumentNode } | { errors: readonly GraphQLError[] } {
  let document: DocumentNode;
  try {
    document = enveloped.parse(query);
  } catch (err) {
    return {
      errors: [
        err instanceof Error && err.name === 'GraphQLError'
          ? (err as GraphQLError)
          : createGraphQLError('the query could not be parsed'),
      ],
    };
  }
  const errors = enveloped.validate(enveloped.schema, document);
  if (errors.length > 0) return { errors };
  return { document };
}

/** Runs an operation inside its request scope (so masked errors are logged with its id). */
async function run(args: ExecutionArgs, kind: 'execute' | 'subscribe'): Promise<never> {
  const root = args.rootValue as EnvelopedRoot;
  const result = await requestScope.run(root.scope, () => root[kind](args));
  if (isAsyncIterable(result)) return bindScope(result, root.scope) as never;
  if (kind === 'subscribe') return refusedAtTheDoor(result as ExecutionResult) as never;
  return result as never;
}

/**
 * A subscription refused when it is opened (who is calling, its arguments, a limit) is answered
 * with graphql-ws' `error` message, the protocol's "this operation did not start", rather than a
 * `next` holding the errors followed by `complete`, which a client cannot tell from a stream that
 * ran and ended. graphql-ws sends `error` only for a stream that throws; its error keeps the
 * thrown GraphQLError's message and extensions (code, retryable, …).
 */
function refusedAtTheDoor(result: ExecutionResult): AsyncIterableIterator<never> {
  const first = result.errors?.[0];
  const refusal = first
    ? createGraphQLError(first.message, {
        path: first.path,
        extensions: withoutHttp(first.extensions),
      })
    : createGraphQLError('the subscription was refused');
  return {
    next: () => Promise.reject(refusal),
    return: () => Promise.resolve({ value: undefined as never, done: true }),
    [Symbol.asyncIterator]() {
      return this;
    },
  };
}

function isAsyncIterable(v: unknown): v is AsyncIterable<unknown> {
  return typeof Object(v)[Symbol.asyncIterator] === 'function';
}

/** The stream with each step run inside `scope` (its events are executed lazily, per step). */
function bindScope<T>(iterable: AsyncIterable<T>, scope: RequestScope): AsyncIterableIterator<T> {
  const it = iterable[Symbol.asyncIterator]();
  return {
    next: () => requestScope.run(scope, () => it.next()),
    return: (value?: unknown) =>
      it.return
        ? requestScope.run(scope, () => it.return!(value))
        : Promise.resolve({ value: undefined, done: true }),
    [Symbol.asyncIterator]() {
      return this;
    },
  };
}

function refuseUpgrade(socket: Duplex, status: number, text: string): void {
  socket.once('finish', () => socket.destroy());
  socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
}
