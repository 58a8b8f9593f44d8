import cluster from 'node:cluster';
import { buildApp } from './app.js';
import { ConfigError, loadConfig } from './config.js';
import { createLogger } from './logger.js';
import { Refusal } from './refusal.js';
import { installShutdown } from './shutdown.js';
import { runWorkers } from './workers.js';

try {
  const config = loadConfig();
  if (config.workers > 1 && cluster.isPrimary) {
    // This process only starts, restarts and stops the workers; each of them runs the service.
    runWorkers(config, createLogger(config, { component: 'workers' }));
  } else {
    const app = buildApp(config);
    installShutdown(() => app.stop(), app.log);
    await app.start();
  }
} catch (err) {
  if (err instanceof ConfigError) {
    console.error(err.message);
    process.exit(2);
  }
  if (err instanceof Refusal) {
    console.error(err.message);
    process.exit(1);
  }
  console.error(err);
  process.exit(1);
}
