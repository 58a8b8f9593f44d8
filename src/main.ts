import { buildApp } from './app.js';
import { ConfigError, loadConfig } from './config.js';
import { installShutdown } from './shutdown.js';

try {
  const config = loadConfig();
  const app = buildApp(config);
  installShutdown(() => app.stop(), app.log);
  await app.start();
} catch (err) {
  if (err instanceof ConfigError) {
    console.error(err.message);
    process.exit(2);
  }
  console.error(err);
  process.exit(1);
}
