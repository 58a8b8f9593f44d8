import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Config } from '../config.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import { sendJson } from './json-response.js';

/** Which listener a request came in on: the service's own port, or METRICS_PORT. */
export type Listener = 'main' | 'metrics';

const BEARER = /^Bearer[ \t]+(\S+)[ \t]*$/i;

/**
 * GET /metrics. The exposition names every tenant and its volume, so it is nobody's to read by
 * default:
 * - METRICS_PORT set: served only on that listener (METRICS_HOST, loopback by default); on the
 *   main port /metrics is 404;
 * - METRICS_TOKEN set: a scrape must present `Authorization: Bearer <METRICS_TOKEN>`, on
 *   whichever listener serves it (401 otherwise);
 * - neither: open in AUTH_MODE=dev (which authenticates nothing anyway), 401 in AUTH_MODE=keys.
 */
export function createMetricsRoute(
  config: Pick<Config, 'metricsPort' | 'metricsToken' | 'authMode'>,
  metrics: Metrics,
  log: Logger,
): (req: IncomingMessage, res: ServerResponse, listener: Listener) => void {
  const token = config.metricsToken === undefined ? undefined : digest(config.metricsToken);
  const separate = config.metricsPort !== undefined;

  return (req, res, listener) => {
    if (separate && listener === 'main') {
      return sendJson(res, 404, { error: 'not found; GraphQL is at /graphql' });
    }
    if (token) {
      const given = BEARER.exec(headerOf(req, 'authorization'))?.[1];
      // Compared as digests: constant time, whatever the length given.
      if (!given || !timingSafeEqual(digest(given), token)) {
        return sendJson(
          res,
          401,
          { error: 'GET /metrics needs "Authorization: Bearer <METRICS_TOKEN>"' },
          { 'www-authenticate': 'Bearer' },
        );
      }
    } else if (!separate && config.authMode !== 'dev') {
      return sendJson(
        res,
        401,
        {
          error:
            `GET /metrics is closed with AUTH_MODE=${config.authMode}: set METRICS_TOKEN (and present it as a ` +
            'bearer token) or METRICS_PORT',
        },
        { 'www-authenticate': 'Bearer' },
      );
    }
    void metrics.render().then(
      (text) => {
        res.writeHead(200, {
          'content-type': metrics.contentType,
          'content-length': Buffer.byteLength(text),
          'cache-control': 'no-store',
        });
        res.end(text);
      },
      (err: unknown) => {
        log.error({ err }, 'metrics could not be rendered');
        sendJson(res, 500, { error: 'metrics could not be rendered' });
      },
    );
  };
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

function headerOf(req: IncomingMessage, name: string): string {
  const v = req.headers[name];
  return typeof v === 'string' ? v : '';
}
