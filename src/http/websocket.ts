import { randomUUID } from 'node:crypto';
import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type { DocumentNode, ExecutionArgs, ExecutionResult, GraphQLError } from 'graphql';
import { type Context, handleProtocols, makeServer } from 'graphql-ws';
import type { Extra } from 'graphql-ws/use/ws';
import { createGraphQLError, type YogaServerInstance } from 'graphql-yoga';
import { type WebSocket, WebSocketServer } from 'ws';
import { UnauthenticatedError } from '../domain/errors.js';
import { tenantIdProblem } from '../domain/tenant.js';
import { authenticateConnection, recheckCaller } from '../graphql/auth.js';
import type { Caller, GraphQLContext, Services } from '../graphql/context.js';
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
  const { log } = opts;
  // Without maxPayload, `ws` buffers messages of up to 100 MiB, whatever MAX_REQUEST_BYTES says.
  const wss = new WebSocketServer({ noServer: true, maxPayload: opts.maxPayload, handleProtocols });
  const states = new WeakMap<WebSocket, ConnectionState>();
  const open = new Set<Context<Record<string, unknown> | undefined, Extra>>();
  let closing: Promise<void> | undefined;

  const stateOf = (socket: WebSocket): ConnectionState => {
    let s = states.get(socket);
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
      states.set(socket, s);
    }
    return s;
  };

  const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== opts.path) return refuseUpgrade(socket, 404, 'Not Found');
    if (closing) return refuseUpgrade(socket, 503, 'Service Unavailable');
    wss.handleUpgrade(req, socket, head, (ws) => {
      stateOf(ws).raw = socket;
      limitBeforeAck(ws, socket, head.length);
      // Most socket errors are a client's doing (a message over MAX_REQUEST_BYTES, which `ws` has
      // already answered with 1009): logged, and the connection closed.
      ws.on('error', (err: Error & { code?: string }) => {
        log.info({ connection: stateOf(ws).id, err, code: err.code }, 'websocket error');
        if (ws.readyState === ws.OPEN) ws.close(1011, 'Internal server error');
      });
      wss.emit('connection', ws, req);
    });
  };

  /**
   * Until a connection is acknowledged (its key checked) it may send at most `maxInitBytes`,
   * counted as they arrive on the socket: an anonymous client cannot make the service buffer and
   * parse a connection_init of MAX_REQUEST_BYTES. Past the limit the connection is closed with
   * 1009 and whatever else it sends is discarded unread.
   */
  const limitBeforeAck = (ws: WebSocket, socket: Duplex, received: number) => {
    const onData = (chunk: Buffer) => {
      if (stateOf(ws).caller) {
        socket.off('data', onData);
        return;
      }
      received += chunk.length;
      if (received <= opts.maxInitBytes) return;
      socket.off('data', onData);
      log.info(
        { connection: stateOf(ws).id, bytes: received, limit: opts.maxInitBytes },
        'websocket refused: too much before connection_ack',
      );
      // `ws` would go on reading the message: stop feeding it and drop what still arrives.
      socket.removeAllListeners('data');
      socket.resume();
      ws.close(
        TOO_BIG,
        `Message Too Big: at most ${opts.maxInitBytes} bytes before connection_ack (WS_MAX_INIT_BYTES)`,
      );
      socket.end();
      setTimeout(() => socket.destroy(), 1_000).unref();
    };
    if (received > opts.maxInitBytes) onData(Buffer.alloc(0));
    else socket.on('data', onData);
  };
  server.on('upgrade', onUpgrade);

  const gql = makeServer<Record<string, unknown> | undefined, Extra>({
    execute: (args) => run(args, 'execute'),
    subscribe: (args) => run(args, 'subscribe'),
    onNext: (_ctx, _id, _payload, _args, result) =>
      result.errors?.some((e) => e.extensions && 'http' in e.extensions)
        ? {
            ...result,
            errors: result.errors.map((e) => {
              const json = e.toJSON();
              return { ...json, extensions: withoutHttp(json.extensions) };
            }),
          }
        : undefined,
    async onConnect(ctx) {
      const socket = ctx.extra.socket;
      const state = stateOf(socket);
      const refuse = (code: number, reason: string) => {
        log.info({ connection: state.id, code, reason }, 'websocket refused');
        // Closing first makes this the close reason the client sees (graphql-ws' own
        // "Forbidden" that follows is ignored by an already closing socket).
        socket.close(code, reason.slice(0, 123));
        return false;
      };
      let caller: Caller;
      try {
        caller = await authenticateConnection(opts.services, ctx.connectionParams);
      } catch (err) {
        log.error({ err, connection: state.id }, 'websocket authentication failed');
        return refuse(1011, 'Internal error: authentication failed, try again');
      }
      if (caller.kind === 'refused') {
        const unauthenticated = caller.error instanceof UnauthenticatedError;
        return refuse(
          unauthenticated ? UNAUTHORIZED : FORBIDDEN,
          `${unauthenticated ? 'Unauthorized' : 'Forbidden'}: ${caller.error.message}`,
        );
      }
      let tenant: string;
      if (caller.kind === 'dev') {
        const claim = caller.tenantClaim;
        const invalid = claim ? tenantIdProblem(claim) : null;
        const problem = !claim
          ? 'the connection_init payload must carry tenantId (AUTH_MODE=dev)'
          : invalid && `tenantId ${invalid}`;
        if (problem) return refuse(FORBIDDEN, `Forbidden: ${problem}`);
        tenant = claim!;
      } else {
        // A platform key may connect; its subscriptions answer ForbiddenError (no tenant).
        tenant = caller.key.tenantId ?? '(platform)';
      }
      const releaseSlot = opts.services.connections.acquire(tenant);
      if (!releaseSlot) {
        return refuse(
          TOO_MANY,
          `Too many connections: at most ${opts.services.connections.max} per tenant ` +
            '(MAX_CONNECTIONS_PER_TENANT)',
        );
      }
      const unwatch =
        caller.kind === 'key'
          ? opts.services.keyWatcher.watch(caller.keyHash, (err) => {
              log.info({ connection: state.id, reason: err.message }, 'websocket key revoked');
              socket.close(UNAUTHORIZED, `Unauthorized: ${err.message}`.slice(0, 123));
            })
          : undefined;
      state.release = () => {
        releaseSlot();
        unwatch?.();
      };
      // The socket may have gone while we authenticated: onClose has run already then.
      if (socket.readyState !== socket.OPEN) {
        state.release();
        return false;
      }
      state.tenant = tenant;
      state.caller = caller;
      open.add(ctx);
      log.info({ connection: state.id, tenant }, 'websocket connected');
      return caller.kind === 'dev' ? { tenantId: tenant } : { tenantId: caller.key.tenantId };
    },
    async onSubscribe(ctx, id, payload) {
      const state = stateOf(ctx.extra.socket);
      // graphql-ws registers the operation before calling us, so this one is counted.
      if (Object.keys(ctx.subscriptions).length > opts.maxOperationsPerConnection) {
        return [
          // graphql-ws tells errors from other values with `instanceof GraphQLError`: build them
          // with the graphql instance the libraries resolve (tests may load a second copy).
          createGraphQLError(
            `at most ${opts.maxOperationsPerConnection} operations may be open at once on one ` +
              'connection (MAX_SUBSCRIPTIONS_PER_CONNECTION); complete one or open another connection',
            { extensions: { code: 'TOO_MANY_SUBSCRIPTIONS' } },
          ),
        ];
      }
      const requestId = randomUUID();
      if (!state.caller) return [createGraphQLError('the connection is not initialised')];
      // Every operation is authorised anew: a key revoked or expired since connection_init is
      // each field's UnauthenticatedError from its next operation on, not only at the re-check.
      let caller: Caller;
      try {
        caller = await recheckCaller(opts.services, state.caller);
      } catch (err) {
        log.warn({ connection: state.id, err: asError(err) }, 'api key re-check failed');
        return [
          createGraphQLError('the API key could not be checked; retry', {
            extensions: { code: 'SERVICE_UNAVAILABLE' },
          }),
        ];
      }
      const abort = new AbortController();
      state.aborts.get(id)?.abort();
      state.aborts.set(id, abort);
      const enveloped = yoga.getEnveloped({
        req: ctx.extra.request,
        connectionCaller: caller,
        operationSignal: abort.signal,
        requestId,
        params: payload,
      });
      let document: DocumentNode;
      try {
        document = enveloped.parse(payload.query);
      } catch (err) {
        state.aborts.delete(id);
        return [
          err instanceof Error && err.name === 'GraphQLError'
            ? (err as GraphQLError)
            : createGraphQLError('the query could not be parsed'),
        ];
      }
      const errors = enveloped.validate(enveloped.schema, document);
      if (errors.length > 0) {
        state.aborts.delete(id);
        return errors;
      }
      const root: EnvelopedRoot = {
        execute: enveloped.execute as EnvelopedRoot['execute'],
        subscribe: enveloped.subscribe as EnvelopedRoot['subscribe'],
        scope: { requestId },
      };
      state.operations++;
      log.debug(
        { connection: state.id, operation: id, requestId, operationName: payload.operationName },
        'websocket operation started',
      );
      return {
        schema: enveloped.schema,
        document,
        operationName: payload.operationName,
        variableValues: payload.variables,
        contextValue: await enveloped.contextFactory(),
        rootValue: root,
      };
    },
    onComplete(ctx, id) {
      const state = stateOf(ctx.extra.socket);
      // The client's `complete`, or the operation's own end: work still running for it (a chain
      // verification, say) stops.
      state.aborts.get(id)?.abort();
      state.aborts.delete(id);
      log.debug({ connection: state.id, operation: id }, 'websocket operation completed');
    },
    onClose(ctx, code, reason) {
      open.delete(ctx);
      const state = stateOf(ctx.extra.socket);
      for (const abort of state.aborts.values()) abort.abort();
      state.aborts.clear();
      state.release?.();
      state.release = null;
      if (state.tenant === null) return; // refused (logged) or never initialised
      log.info(
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
    },
  });
  const turns = new MessageTurns(MAX_WAITING_MESSAGES);
  wss.on('connection', (socket: WebSocket, request: IncomingMessage) => {
    // Its `close` event is the last thing it emits: this ends the connection once and for all.
    let pongWait: NodeJS.Timeout | undefined;
    const keepAlive = setInterval(() => {
      if (socket.readyState !== socket.OPEN || pongWait) return;
      pongWait = setTimeout(() => socket.terminate(), KEEP_ALIVE_MS);
      socket.ping();
    }, KEEP_ALIVE_MS);
    socket.on('pong', () => {
      clearTimeout(pongWait);
      pongWait = undefined;
    });
    const state = stateOf(socket);
    const closed = gql.opened(
      {
        protocol: socket.protocol,
        send: (data) =>
          new Promise<void>((resolve, reject) => {
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
          }),
        close: (code, reason) => socket.close(code, reason),
        onMessage: (handle) => {
          const lane = turns.lane(
            async (data) => {
              try {
                await handle(data);
              } catch (err) {
                log.error(
                  { connection: stateOf(socket).id, err },
                  'websocket message handling failed',
                );
                if (socket.readyState === socket.OPEN) socket.close(1011, 'Internal server error');
              }
            },
            (waiting) => (waiting ? socket.pause() : socket.resume()),
          );
          socket.on('message', (data: Buffer) => lane.push(String(data)));
          socket.once('close', () => lane.close());
        },
      },
      { socket, request },
    );
    socket.once('close', (code, reason) => {
      clearInterval(keepAlive);
      clearTimeout(pongWait);
      void closed(code, String(reason));
    });
  });

  /** Operations still open on every acknowledged connection. */
  const openOperations = () => {
    let n = 0;
    for (const ctx of open) n += Object.keys(ctx.subscriptions).length;
    return n;
  };

  return {
    get connections() {
      return wss.clients.size;
    },
    close(graceMs = 2_000) {
      closing ??= (async () => {
        const deadline = Date.now() + graceMs;
        // Completed operations send their last message and `complete`, then leave the map.
        while (openOperations() > 0 && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 10));
        }
        const left = openOperations();
        if (left > 0) log.warn({ operations: left }, 'websocket operations still open at shutdown');
        for (const socket of wss.clients) socket.close(1001, 'server shutting down');
        const terminate = setTimeout(
          () => {
            for (const socket of wss.clients) socket.terminate();
          },
          Math.max(100, deadline - Date.now()),
        );
        try {
          wss.removeAllListeners('connection');
          await new Promise<void>((resolve, reject) =>
            wss.close((err) => (err ? reject(err) : resolve())),
          );
        } finally {
          clearTimeout(terminate);
          server.off('upgrade', onUpgrade);
        }
      })();
      return closing;
    },
  };
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
