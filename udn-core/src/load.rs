//! LOADP per server: the CPU, memory, swap and disk use of the host a server runs on,
//! combined into one load score with the network's weights, and the overload cut-off.
//!
//! The score is `(cpu * w_cpu + memory * w_memory + swap * w_swap + disk * w_disk) /
//! (w_cpu + w_memory + w_swap + w_disk)`, each part in percent (0..=100), so the score is
//! a percentage too. The defaults weigh CPU 0.4, memory 0.3, swap 0.2 and disk 0.1. A
//! report that carries only the single `percent` (older reporters) counts as that score.
//! A server whose score is at or above `load.overload_percent` (default 90) is
//! overloaded: it is not answered while a usable target that is not overloaded exists.

use crate::config::LoadConfig;
use serde::{Deserialize, Serialize};

/// The four LOADP figures of one host, percent (0..=100 each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadParts {
    /// CPU: the 1-minute load average per CPU.
    pub cpu: f32,
    /// Memory in use (total minus available).
    pub memory: f32,
    /// Swap in use.
    pub swap: f32,
    /// Disk: the fullest watched file system.
    pub disk: f32,
}

/// Clamps a reported percentage into 0..=100 (non-finite counts as fully loaded).
pub fn clamp_percent(p: f32) -> f32 {
    if p.is_finite() {
        p.clamp(0.0, 100.0)
    } else {
        100.0
    }
}

impl LoadParts {
    /// Every part clamped into 0..=100.
    pub fn clamped(self) -> LoadParts {
        LoadParts {
            cpu: clamp_percent(self.cpu),
            memory: clamp_percent(self.memory),
            swap: clamp_percent(self.swap),
            disk: clamp_percent(self.disk),
        }
    }

    /// The weighted score under `rules`, percent.
    ///
    /// ```
    /// use udn_core::config::LoadConfig;
    /// use udn_core::load::LoadParts;
    /// let p = LoadParts { cpu: 100.0, memory: 50.0, swap: 0.0, disk: 10.0 };
    /// // 0.4 * 100 + 0.3 * 50 + 0.2 * 0 + 0.1 * 10 = 56
    /// assert!((p.score(&LoadConfig::default()) - 56.0).abs() < 1e-4);
    /// ```
    pub fn score(self, rules: &LoadConfig) -> f32 {
        let p = self.clamped();
        let total = rules.cpu + rules.memory + rules.swap + rules.disk;
        if total <= 0.0 || !total.is_finite() {
            return p.cpu.max(p.memory);
        }
        clamp_percent(
            (p.cpu * rules.cpu
                + p.memory * rules.memory
                + p.swap * rules.swap
                + p.disk * rules.disk)
                / total,
        )
    }
}
