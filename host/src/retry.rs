//! Retrying: one backoff policy and one retry loop for every place that
//! waits on something outside the host (a sink, the broker, a run).

use std::future::Future;
use std::ops::ControlFlow;
use std::time::Duration;
use tokio::sync::watch;

/// Delays between attempts: doubling from `first` up to `max`, optionally
/// spread by +-20% so many pipelines retrying at once do not stay in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    jitter: bool,
}

impl Backoff {
    pub fn exponential(first: Duration, max: Duration) -> Self {
        Backoff {
            next: first,
            max: max.max(first),
            jitter: false,
        }
    }

    /// The same delay every time.
    pub fn constant(every: Duration) -> Self {
        Backoff::exponential(every, every)
    }

    pub fn with_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        if self.jitter {
            delay.mul_f64(0.8 + 0.4 * rand::random::<f64>())
        } else {
            delay
        }
    }
}

/// Why `retry` stopped without a result.
#[derive(Debug)]
pub enum GaveUp<E> {
    /// `on_failure` said to stop; the last error.
    Stopped(E),
    /// Shutdown was requested while waiting; the last error.
    ShutDown(E),
}

impl<E> GaveUp<E> {
    pub fn into_error(self) -> E {
        match self {
            GaveUp::Stopped(e) | GaveUp::ShutDown(e) => e,
        }
    }
}

/// Runs `op` until it succeeds. After each failure `on_failure` sees the
/// error, the attempt number (from 1) and the delay before the next try,
/// and decides whether to go on. A shutdown (if given) ends the wait.
pub async fn retry<T, E, F, Fut>(
    mut backoff: Backoff,
    mut shutdown: Option<&mut watch::Receiver<bool>>,
    mut op: F,
    mut on_failure: impl FnMut(&E, u32, Duration) -> ControlFlow<()>,
) -> Result<T, GaveUp<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let error = match op().await {
            Ok(done) => return Ok(done),
            Err(e) => e,
        };
        let delay = backoff.next_delay();
        if on_failure(&error, attempt, delay).is_break() {
            return Err(GaveUp::Stopped(error));
        }
        match shutdown.as_deref_mut() {
            Some(shutdown) => {
                if !sleep_unless_shutdown(delay, shutdown).await {
                    return Err(GaveUp::ShutDown(error));
                }
            }
            None => tokio::time::sleep(delay).await,
        }
    }
}

/// Sleeps for `delay`; returns false at once if shutdown is (or becomes)
/// requested.
pub async fn sleep_unless_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = shutdown.changed() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn delays_double_up_to_the_cap() {
        let ms = Duration::from_millis;
        let mut b = Backoff::exponential(ms(200), ms(1000));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(delays, [ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        let mut c = Backoff::constant(ms(250));
        assert_eq!((c.next_delay(), c.next_delay()), (ms(250), ms(250)));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let base = Duration::from_secs(10);
        for _ in 0..200 {
            let d = Backoff::constant(base).with_jitter().next_delay();
            assert!(d >= base.mul_f64(0.8) && d <= base.mul_f64(1.2), "{d:?}");
        }
    }

    #[tokio::test]
    async fn retries_until_success_and_reports_each_failure() {
        let calls = Cell::new(0);
        let mut seen = Vec::new();
        let result = retry(
            Backoff::exponential(Duration::from_millis(10), Duration::from_secs(1)),
            None,
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move { if n < 4 { Err(n) } else { Ok("done") } }
            },
            |e: &u32, attempt, delay| {
                seen.push((*e, attempt, delay.as_millis()));
                ControlFlow::Continue(())
            },
        )
        .await;
        assert_eq!(result.unwrap(), "done");
        assert_eq!(seen, [(1, 1, 10), (2, 2, 20), (3, 3, 40)]);
    }

    #[tokio::test]
    async fn gives_up_when_told_or_at_shutdown() {
        let stopped = retry(
            Backoff::constant(Duration::from_millis(5)),
            None,
            || async { Err::<(), _>("no") },
            |_, attempt, _| {
                if attempt == 3 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )
        .await;
        assert!(matches!(stopped, Err(GaveUp::Stopped("no"))));

        let (tx, mut rx) = watch::channel(false);
        tx.send(true).unwrap();
        let shut = retry(
            Backoff::constant(Duration::from_secs(3600)),
            Some(&mut rx),
            || async { Err::<(), _>("down") },
            |_, _, _| ControlFlow::Continue(()),
        )
        .await;
        assert!(matches!(shut, Err(GaveUp::ShutDown("down"))));
    }
}
