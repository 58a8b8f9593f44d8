/**
 * A documented refusal to start the service or run a command: the embedded database held by
 * another process, a checkpoint key that is not the deployment's, and the like. Entry points
 * print its message alone — one line, no stack trace — and exit non-zero; anything else that
 * escapes them is a bug and keeps its stack.
 */
export class Refusal extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}
