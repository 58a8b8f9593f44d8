import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { fileURLToPath } from 'node:url';
import type { Config } from '../config.js';
import { explorerPage } from '../explorer/page.js';
import type { Logger } from '../logger.js';
import { sendJson } from './json-response.js';

/**
 * `/explorer` (the page) and `/explorer/app.js` (its script), served by the service itself:
 * every asset is in the bundle, nothing comes from another origin (audit services often run
 * where the internet is not reachable), and the content security policy says so. The page is
 * public — it holds no data; it calls `/graphql` with the credentials a person types in.
 *
 * The script is the esbuild bundle `npm run build` writes beside the compiled code
 * (dist/explorer/app.js). Run from the sources (`npm run dev`, tests), it is bundled from
 * src/explorer/app.ts on first request instead.
 */
export function createExplorerRoute(config: Config, log: Logger) {
  let script: Promise<string> | undefined;
  const page = explorerPage(config.authMode);
  const bundle = (): Promise<string> => {
    script ??= loadScript().catch((err: unknown) => {
      script = undefined;
      throw err;
    });
    return script;
  };
  return (req: IncomingMessage, res: ServerResponse, path: string): void => {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      sendJson(res, 405, { error: 'GET only' }, { allow: 'GET, HEAD' });
      return;
    }
    if (path === '/explorer' || path === '/explorer/') {
      const body = Buffer.from(page);
      res.writeHead(200, {
        'content-type': 'text/html; charset=utf-8',
        'content-length': body.length,
        'cache-control': 'no-cache',
        'content-security-policy': policy(req),
        'x-content-type-options': 'nosniff',
        'referrer-policy': 'no-referrer',
      });
      res.end(req.method === 'HEAD' ? undefined : body);
      return;
    }
    if (path !== '/explorer/app.js') {
      sendJson(res, 404, { error: 'not found; the explorer is at /explorer' });
      return;
    }
    bundle().then(
      (text) => {
        const body = Buffer.from(text);
        res.writeHead(200, {
          'content-type': 'text/javascript; charset=utf-8',
          'content-length': body.length,
          'cache-control': 'no-cache',
          'x-content-type-options': 'nosniff',
        });
        res.end(req.method === 'HEAD' ? undefined : body);
      },
      (err: unknown) => {
        log.error({ err }, 'explorer script unavailable');
        sendJson(res, 503, { error: 'the explorer is not built: run `npm run build`' });
      },
    );
  };
}

/** Scripts from this origin only; calls to this origin (HTTP and WebSocket) only. */
function policy(req: IncomingMessage): string {
  const host = /^[A-Za-z0-9.:[\]-]+$/.test(req.headers.host ?? '') ? req.headers.host : null;
  const sockets = host ? ` ws://${host} wss://${host}` : '';
  return [
    "default-src 'none'",
    "script-src 'self'",
    // The page's own <style> and one style attribute; no style comes from anywhere else.
    "style-src 'unsafe-inline'",
    `connect-src 'self'${sockets}`,
    "img-src 'self' data: blob:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
}

async function loadScript(): Promise<string> {
  const built = fileURLToPath(new URL('../explorer/app.js', import.meta.url));
  try {
    return await readFile(built, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  // From the sources: bundle them now (esbuild comes with the development dependencies).
  const source = fileURLToPath(new URL('../explorer/app.ts', import.meta.url));
  const { build } = await import('esbuild');
  const out = await build({
    entryPoints: [source],
    bundle: true,
    format: 'esm',
    target: 'es2022',
    minify: true,
    write: false,
    logLevel: 'silent',
  });
  return out.outputFiles[0]!.text;
}
