//! LOADP: the load of the probe's machine from its Linux sources.
//!
//! The numbers come through a [`LoadSource`] (the agent reads `/proc/loadavg`,
//! `/proc/meminfo` and `statvfs`; tests feed fixed text), and the parsers here never
//! panic, whatever the text.
//!
//! # Examples
//!
//! ```
//! use udn_probe::loadp::{DiskStats, FixedSource, read_load};
//! let src = FixedSource {
//!     loadavg: "1.50 0.75 0.25 2/345 6789\n".into(),
//!     meminfo: "MemTotal: 1000 kB\nMemAvailable: 400 kB\nSwapTotal: 100 kB\nSwapFree: 100 kB\n".into(),
//!     cpus: 2,
//!     disks: vec![DiskStats { mount: "/".into(), block_size: 4096, blocks: 100, blocks_available: 90 }],
//! };
//! let r = read_load(&src).unwrap();
//! assert_eq!(r.load1, 1.5);
//! assert_eq!(r.cpu_percent, 75.0);
//! assert_eq!(r.mem_percent, 60.0);
//! assert_eq!(r.disks[0].used_percent, 10.0);
//! assert_eq!(r.percent, 75.0); // the busiest of CPU and memory
//! ```

use crate::Error;
use crate::error::LoadSourcePart;
use serde::Serialize;

/// The numbers `statvfs(2)` gives for one mount point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskStats {
    /// Mount point.
    pub mount: String,
    /// Fragment size (`f_frsize`), bytes.
    pub block_size: u64,
    /// Blocks in all (`f_blocks`).
    pub blocks: u64,
    /// Blocks available to unprivileged users (`f_bavail`).
    pub blocks_available: u64,
}

/// Where LOADP reads the machine's numbers.
pub trait LoadSource {
    /// The text of `/proc/loadavg`.
    fn loadavg(&self) -> Result<String, Error>;
    /// The text of `/proc/meminfo`.
    fn meminfo(&self) -> Result<String, Error>;
    /// Number of CPUs online.
    fn cpus(&self) -> u32;
    /// `statvfs` of the watched mount points.
    fn disks(&self) -> Vec<DiskStats>;
}

/// A [`LoadSource`] with fixed contents (tests, embedders on other systems).
#[derive(Debug, Clone, Default)]
pub struct FixedSource {
    /// `/proc/loadavg` text.
    pub loadavg: String,
    /// `/proc/meminfo` text.
    pub meminfo: String,
    /// CPUs.
    pub cpus: u32,
    /// Disks.
    pub disks: Vec<DiskStats>,
}

impl LoadSource for FixedSource {
    fn loadavg(&self) -> Result<String, Error> {
        Ok(self.loadavg.clone())
    }
    fn meminfo(&self) -> Result<String, Error> {
        Ok(self.meminfo.clone())
    }
    fn cpus(&self) -> u32 {
        self.cpus
    }
    fn disks(&self) -> Vec<DiskStats> {
        self.disks.clone()
    }
}

/// Load averages from `/proc/loadavg`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LoadAvg {
    /// 1-minute average.
    pub load1: f64,
    /// 5-minute average.
    pub load5: f64,
    /// 15-minute average.
    pub load15: f64,
}

/// Parses `/proc/loadavg` (`"0.52 0.58 0.59 1/467 12345"`): the first three fields.
/// Negative, non-finite or missing values give `None`.
pub fn parse_loadavg(text: &str) -> Option<LoadAvg> {
    let mut it = text
        .split_ascii_whitespace()
        .map(|f| f.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0));
    Some(LoadAvg {
        load1: it.next()??,
        load5: it.next()??,
        load15: it.next()??,
    })
}

/// Memory and swap from `/proc/meminfo`, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total_kb: u64,
    /// `MemAvailable` (or `MemFree + Buffers + Cached` on old kernels).
    pub available_kb: u64,
    /// `SwapTotal`.
    pub swap_total_kb: u64,
    /// `SwapFree`.
    pub swap_free_kb: u64,
}

/// Parses `/proc/meminfo` (`"MemTotal:  16318480 kB"` lines). Unknown and malformed
/// lines are ignored; `None` when `MemTotal` is missing.
pub fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let mut total = None;
    let (mut avail, mut free, mut buffers, mut cached) = (None, 0u64, 0u64, 0u64);
    let (mut swap_total, mut swap_free) = (0u64, 0u64);
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut fields = rest.split_ascii_whitespace();
        let Some(v) = fields.next().and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        // Values are in kB; a line with another unit (none in practice) is taken as bytes.
        let v = match fields.next() {
            None | Some("kB") => v,
            Some(_) => v / 1024,
        };
        match key.trim() {
            "MemTotal" => total = Some(v),
            "MemAvailable" => avail = Some(v),
            "MemFree" => free = v,
            "Buffers" => buffers = v,
            "Cached" => cached = v,
            "SwapTotal" => swap_total = v,
            "SwapFree" => swap_free = v,
            _ => {}
        }
    }
    let total_kb = total?;
    let available_kb = avail
        .unwrap_or_else(|| free.saturating_add(buffers).saturating_add(cached))
        .min(total_kb);
    Some(MemInfo {
        total_kb,
        available_kb,
        swap_total_kb: swap_total,
        swap_free_kb: swap_free.min(swap_total),
    })
}

/// Usage of one mount point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskUsage {
    /// Mount point.
    pub mount: String,
    /// Size, bytes.
    pub total_bytes: u64,
    /// Available to unprivileged users, bytes.
    pub available_bytes: u64,
    /// Used percent (of what unprivileged users could have), 0..=100.
    pub used_percent: f64,
}

impl DiskUsage {
    /// From `statvfs` numbers (saturating; 0 % for an empty file system).
    pub fn from_stats(s: &DiskStats) -> DiskUsage {
        let total = s.blocks.saturating_mul(s.block_size);
        let avail = s
            .blocks_available
            .min(s.blocks)
            .saturating_mul(s.block_size);
        DiskUsage {
            mount: s.mount.clone(),
            total_bytes: total,
            available_bytes: avail,
            used_percent: percent(total - avail, total),
        }
    }
}

/// A LOADP report of one machine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    /// 1-minute load average.
    pub load1: f64,
    /// 5-minute load average.
    pub load5: f64,
    /// 15-minute load average.
    pub load15: f64,
    /// CPUs online.
    pub cpus: u32,
    /// 1-minute load per CPU, percent, capped at 100.
    pub cpu_percent: f64,
    /// Memory.
    pub mem: MemInfo,
    /// Memory used, percent.
    pub mem_percent: f64,
    /// Swap used, percent (0 without swap).
    pub swap_percent: f64,
    /// Disks.
    pub disks: Vec<DiskUsage>,
    /// The load reported to the DNS servers: the busiest of CPU and memory, 0..=100.
    pub percent: f64,
}

impl LoadReport {
    /// The four figures the DNS servers score (see `udn_core::load`): CPU, memory,
    /// swap, and the fullest watched disk.
    pub fn parts(&self) -> udn_core::load::LoadParts {
        udn_core::load::LoadParts {
            cpu: self.cpu_percent as f32,
            memory: self.mem_percent as f32,
            swap: self.swap_percent as f32,
            disk: self
                .disks
                .iter()
                .map(|d| d.used_percent)
                .fold(0.0, f64::max) as f32,
        }
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 100.0 / whole as f64).clamp(0.0, 100.0)
    }
}

/// Reads and combines every number of a source.
pub fn read_load(src: &dyn LoadSource) -> Result<LoadReport, Error> {
    let la = parse_loadavg(&src.loadavg()?)
        .ok_or(Error::LoadSourceUnparsable(LoadSourcePart::LoadAvg))?;
    let mem = parse_meminfo(&src.meminfo()?)
        .ok_or(Error::LoadSourceUnparsable(LoadSourcePart::MemInfo))?;
    let cpus = src.cpus().max(1);
    let cpu_percent = (la.load1 * 100.0 / f64::from(cpus)).clamp(0.0, 100.0);
    let mem_percent = percent(mem.total_kb - mem.available_kb, mem.total_kb);
    let swap_percent = percent(mem.swap_total_kb - mem.swap_free_kb, mem.swap_total_kb);
    let disks: Vec<DiskUsage> = src.disks().iter().map(DiskUsage::from_stats).collect();
    Ok(LoadReport {
        load1: la.load1,
        load5: la.load5,
        load15: la.load15,
        cpus,
        cpu_percent,
        mem,
        mem_percent,
        swap_percent,
        disks,
        percent: cpu_percent.max(mem_percent),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MEMINFO: &str = "MemTotal:       16318480 kB\nMemFree:         1234567 kB\nMemAvailable:    8159240 kB\nBuffers:          100000 kB\nCached:          2000000 kB\nSwapCached:            0 kB\nSwapTotal:       2097148 kB\nSwapFree:        1048574 kB\nHugePages_Total:       0\n";

    #[test]
    fn parses_real_meminfo() {
        let m = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(m.total_kb, 16_318_480);
        assert_eq!(m.available_kb, 8_159_240);
        assert_eq!(m.swap_total_kb, 2_097_148);
        assert_eq!(m.swap_free_kb, 1_048_574);
    }

    #[test]
    fn old_kernel_without_memavailable() {
        let m =
            parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n")
                .unwrap();
        assert_eq!(m.available_kb, 400);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_loadavg(""), None);
        assert_eq!(parse_loadavg("1.0 2.0"), None);
        assert_eq!(parse_loadavg("1.0 NaN 2.0"), None);
        assert_eq!(parse_loadavg("-1 0 0"), None);
        assert_eq!(parse_meminfo("SwapTotal: 5 kB"), None);
        let src = FixedSource {
            loadavg: "x".into(),
            ..Default::default()
        };
        assert!(matches!(
            read_load(&src),
            Err(Error::LoadSourceUnparsable(LoadSourcePart::LoadAvg))
        ));
    }

    #[test]
    fn report_combines() {
        let src = FixedSource {
            loadavg: "8.00 4.00 2.00 1/1 1".into(),
            meminfo: MEMINFO.into(),
            cpus: 4,
            disks: vec![DiskStats {
                mount: "/".into(),
                block_size: 4096,
                blocks: 1000,
                blocks_available: 250,
            }],
        };
        let r = read_load(&src).unwrap();
        assert_eq!(r.cpu_percent, 100.0, "capped");
        assert!((r.mem_percent - 50.0).abs() < 0.01);
        assert!((r.swap_percent - 50.0).abs() < 0.01);
        assert_eq!(r.disks[0].used_percent, 75.0);
        assert_eq!(r.percent, 100.0);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*", b in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_loadavg(&s);
            let _ = parse_meminfo(&s);
            let t = String::from_utf8_lossy(&b);
            let _ = parse_loadavg(&t);
            if let Some(m) = parse_meminfo(&t) {
                prop_assert!(m.available_kb <= m.total_kb);
                prop_assert!(m.swap_free_kb <= m.swap_total_kb);
            }
        }

        #[test]
        fn percents_in_range(load in 0.0f64..1e6, cpus in 0u32..256, total in any::<u64>(), avail in any::<u64>(),
                             bs in any::<u64>(), blocks in any::<u64>(), bavail in any::<u64>()) {
            let src = FixedSource {
                loadavg: format!("{load} 0 0 1/1 1"),
                meminfo: format!("MemTotal: {total} kB\nMemAvailable: {avail} kB\n"),
                cpus,
                disks: vec![DiskStats { mount: "/".into(), block_size: bs, blocks, blocks_available: bavail }],
            };
            let r = read_load(&src).unwrap();
            for p in [r.cpu_percent, r.mem_percent, r.swap_percent, r.percent, r.disks[0].used_percent] {
                prop_assert!((0.0..=100.0).contains(&p), "{p}");
            }
        }
    }
}
