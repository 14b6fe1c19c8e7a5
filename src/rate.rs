//! Rate limits: on the snapshot's reads from the source (rows/s) and on what each sink is
//! given (changes/s, bytes/s). Limits are token buckets (governor) with a burst of a twentieth
//! of a second's quota, so over any run longer than a second the rate holds within a few
//! percent of its setting.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{mpsc, watch};

use crate::config::RateLimits;
use crate::queue::Queued;

/// A limit of `per_second` units per second.
pub struct Limit {
    limiter: DefaultDirectRateLimiter,
    burst: u32,
}

impl Limit {
    /// `None` for no limit (a setting of 0 also means none).
    pub fn per_second(per_second: Option<u32>) -> Option<Limit> {
        let rate = NonZeroU32::new(per_second?)?;
        let burst = (rate.get() / 20).max(1);
        let quota =
            Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).expect("at least 1"));
        Some(Limit {
            limiter: RateLimiter::direct(quota),
            burst,
        })
    }

    /// Waits until `units` more may pass.
    pub async fn take(&self, mut units: u64) {
        while units > 0 {
            let n = units.min(u64::from(self.burst)) as u32;
            // n never exceeds the burst, so the limiter can always grant it.
            let _ = self
                .limiter
                .until_n_ready(NonZeroU32::new(n).expect("n > 0"))
                .await;
            units -= u64::from(n);
        }
    }
}

/// Passes a sink's queued batches on at no more than its limits (read from `limits` before
/// each batch, so an operator can change them), and counts how long it held them (shown as
/// the sink's time throttled). Ends when either side closes.
pub async fn pace(
    mut rx: mpsc::Receiver<Queued>,
    tx: mpsc::Sender<Queued>,
    mut limits: watch::Receiver<RateLimits>,
    throttled_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let mut current = *limits.borrow_and_update();
    let mut changes = Limit::per_second(current.changes_per_s);
    let mut bytes = Limit::per_second(current.bytes_per_s);
    while let Some(q) = rx.recv().await {
        if limits.has_changed().unwrap_or(false) {
            let new = *limits.borrow_and_update();
            if new != current {
                current = new;
                changes = Limit::per_second(current.changes_per_s);
                bytes = Limit::per_second(current.bytes_per_s);
            }
        }
        if changes.is_none() && bytes.is_none() {
            if tx.send(q).await.is_err() {
                return;
            }
            continue;
        }
        let began = tokio::time::Instant::now();
        if let Some(limit) = &changes {
            let n = q
                .events
                .iter()
                .filter(|e| matches!(e, cutover_core::StreamEvent::Change(_)))
                .count();
            limit.take(n as u64).await;
        }
        if let Some(limit) = &bytes {
            let n: usize = q.events.iter().map(cutover_core::StreamEvent::size).sum();
            limit.take(n as u64).await;
        }
        throttled_ms.fetch_add(
            began.elapsed().as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if tx.send(q).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_limit_holds_its_rate() {
        let limit = Limit::per_second(Some(2_000)).unwrap();
        let began = std::time::Instant::now();
        for _ in 0..10 {
            limit.take(100).await;
        }
        // 1000 units at 2000/s: 0.5 s, less the initial burst of 100.
        let secs = began.elapsed().as_secs_f64();
        assert!((0.40..0.60).contains(&secs), "{secs}");
        assert!(Limit::per_second(Some(0)).is_none());
        assert!(Limit::per_second(None).is_none());
    }
}
