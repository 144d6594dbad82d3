/**
 * Waiting on child processes without letting the host's event loop end.
 *
 * @module
 */

/**
 * Awaits a promise while keeping the event loop alive. Children are unref'd
 * (so idle ones never keep the host running); without this, a program or
 * test whose only pending work is a child's start or exit would end (or
 * report an unresolved promise) before it settles.
 *
 * @param promise What to wait for.
 * @returns Its value.
 */
export async function holdingLoop<T>(promise: Promise<T>): Promise<T> {
  const timer = setInterval(() => {}, 60_000);
  try {
    return await promise;
  } finally {
    clearInterval(timer);
  }
}
