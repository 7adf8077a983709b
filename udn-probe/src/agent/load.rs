//! The local machine as a LOADP source: `/proc/loadavg`, `/proc/meminfo` and
//! `statvfs` of the watched mount points.

use crate::Error;
use crate::error::LoadSourcePart;
use crate::loadp::{DiskStats, LoadSource};
use std::path::PathBuf;

/// Reads the Linux sources of this machine.
#[derive(Debug, Clone)]
pub struct ProcSource {
    /// Directory of the proc file system (`/proc`).
    pub proc: PathBuf,
    /// Mount points whose usage is reported.
    pub mounts: Vec<PathBuf>,
}

impl Default for ProcSource {
    fn default() -> Self {
        ProcSource {
            proc: PathBuf::from("/proc"),
            mounts: vec![PathBuf::from("/")],
        }
    }
}

impl LoadSource for ProcSource {
    fn loadavg(&self) -> Result<String, Error> {
        std::fs::read_to_string(self.proc.join("loadavg"))
            .map_err(|_| Error::LoadSourceUnavailable(LoadSourcePart::LoadAvg))
    }

    fn meminfo(&self) -> Result<String, Error> {
        std::fs::read_to_string(self.proc.join("meminfo"))
            .map_err(|_| Error::LoadSourceUnavailable(LoadSourcePart::MemInfo))
    }

    fn cpus(&self) -> u32 {
        std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
    }

    fn disks(&self) -> Vec<DiskStats> {
        self.mounts
            .iter()
            .filter_map(|m| {
                let s = rustix::fs::statvfs(m).ok()?;
                Some(DiskStats {
                    mount: m.display().to_string(),
                    block_size: s.f_frsize,
                    blocks: s.f_blocks,
                    blocks_available: s.f_bavail,
                })
            })
            .collect()
    }
}
