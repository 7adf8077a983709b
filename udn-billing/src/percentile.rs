//! The 95th percentile of 5-minute bandwidth samples, as burstable billing defines it.
//!
//! Definition (also in `docs/billing.md`): take one sample per 5-minute bucket of the
//! billed interval, each the bytes delivered in that bucket summed across all POPs;
//! buckets without traffic are samples of zero, so N is the number of buckets in the
//! interval, not the number of buckets that saw traffic. Sort ascending, drop the top
//! `floor(N / 20)` samples and bill the highest remaining one, `sorted[N - N/20 - 1]`.
//! For N < 20 nothing is dropped (the maximum is billed); for N = 0 the rate is zero.

use rust_decimal::Decimal;

/// Index into the ascending samples of the billed one: `N - floor(N/20) - 1`, or
/// `None` for no samples.
pub fn p95_rank(n: usize) -> Option<usize> {
    (n > 0).then(|| n - n / 20 - 1)
}

/// The billed sample (bytes in its 5-minute bucket). Runs in O(N) with a selection
/// instead of a sort; `scratch` is reused to avoid an allocation per call.
///
/// # Examples
///
/// ```
/// use udn_billing::percentile::p95_bytes;
/// // 40 buckets: the two largest (40 / 20 = 2) are dropped
/// let samples: Vec<u64> = (1..=40).collect();
/// assert_eq!(p95_bytes(&samples, &mut Vec::new()), 38);
/// ```
pub fn p95_bytes(samples: &[u64], scratch: &mut Vec<u64>) -> u64 {
    let Some(k) = p95_rank(samples.len()) else {
        return 0;
    };
    scratch.clear();
    scratch.extend_from_slice(samples);
    *scratch.select_nth_unstable(k).1
}

/// Converts bytes in a 5-minute bucket to megabits per second:
/// `bytes * 8 / 300 / 10^6` (decimal megabits).
///
/// # Examples
///
/// ```
/// use rust_decimal::Decimal;
/// use udn_billing::percentile::bucket_bytes_to_mbps;
/// assert_eq!(bucket_bytes_to_mbps(3_750_000_000), Decimal::from(100));
/// ```
pub fn bucket_bytes_to_mbps(bytes: u64) -> Decimal {
    Decimal::from(bytes) * Decimal::from(8) / Decimal::from(300_000_000u64)
}
