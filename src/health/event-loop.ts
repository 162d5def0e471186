import { monitorEventLoopDelay } from 'node:perf_hooks';

/**
 * The event loop's worst delay over the last `windows` × `windowMs`: a loop blocked for 10 s cannot
 * answer /health meanwhile, so the stall is remembered and told afterwards for a while.
 */
export function watchEventLoop(onLag: (worstMs: number) => void, windowMs = 5000, windows = 6): () => void {
  const histogram = monitorEventLoopDelay({ resolution: 20 });
  histogram.enable();
  const recent: number[] = [];
  const timer = setInterval(() => {
    recent.push(histogram.max / 1e6);
    if (recent.length > windows) recent.shift();
    histogram.reset();
    onLag(Math.max(...recent));
  }, windowMs);
  timer.unref();
  return () => {
    clearInterval(timer);
    histogram.disable();
  };
}
