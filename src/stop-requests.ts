import type { Logger } from 'pino';
import { describeError } from './errors.js';

/** Thrown by `check()` and `orStop()` once a stop was requested: the boot unwinds to its finish stage. */
export class StopRequested extends Error {}

/**
 * What ends a boot: SIGTERM or SIGINT, SIGHUP where asked (`demo`: its terminal closed), a bug
 * (an uncaught exception or rejection, logged, then the same shutdown), or the runner itself
 * (PM2 gone). The first request wins; later ones are logged and ignored, so the wipe always runs.
 * Installed for one boot; `dispose` removes every handler.
 */
export class StopRequests {
  /** Why the boot stops, once it does. */
  reason: string | undefined;
  /** True when the stop came from an unexpected error (the boot then exits 70). */
  fatal = false;
  /** Resolves with the first reason. */
  readonly requested: Promise<string>;
  private resolve: (reason: string) => void = () => undefined;
  private readonly handlers: Array<[string, (...args: unknown[]) => void]> = [];

  constructor(
    private readonly logger: Logger,
    /** SIGHUP: stop (`demo`), or what to do instead (re-read the secrets). */
    onHangup: 'stop' | (() => void),
  ) {
    this.requested = new Promise<string>((resolve) => {
      this.resolve = resolve;
    });
    const onSignal = (signal: unknown) => this.request(String(signal));
    const onFatal = (error: unknown) => {
      this.fatal = true;
      logger.fatal({ err: describeError(error) }, 'unexpected error: shutting down');
      this.request('fatal error');
    };
    this.listen('SIGTERM', onSignal);
    this.listen('SIGINT', onSignal);
    this.listen('SIGHUP', onHangup === 'stop' ? () => this.request('SIGHUP') : onHangup);
    this.listen('uncaughtException', onFatal);
    this.listen('unhandledRejection', onFatal);
  }

  private listen(event: string, handler: (...args: unknown[]) => void): void {
    process.on(event, handler);
    this.handlers.push([event, handler]);
  }

  request(reason: string): void {
    if (this.reason) {
      this.logger.warn({ signal: reason }, `${reason} received during shutdown; finishing the shutdown (the wipe still runs)`);
      return;
    }
    this.reason = reason;
    this.resolve(reason);
  }

  /** Throw StopRequested if a stop was requested: called between the boot's phases. */
  check(): void {
    if (this.reason) throw new StopRequested();
  }

  /** `promise`, unless a stop is requested first (then StopRequested): a signal never waits on it. */
  orStop<T>(promise: Promise<T>): Promise<T> {
    const stopped = this.requested.then<never>(() => Promise.reject(new StopRequested()));
    stopped.catch(() => undefined);
    return Promise.race([promise, stopped]);
  }

  dispose(): void {
    for (const [event, handler] of this.handlers.splice(0)) process.off(event, handler);
  }
}
