//! How much memory a trial needs, estimated before anything is built, and how much this
//! process may use: so that a typo (`depth = 200000`, `batch_size = 10000000`) is a message,
//! not the kernel's OOM killer taking down the runner and its neighbours.
//!
//! The estimate of a CPU trial's peak resident memory is the sum of
//! - the process before the trial (binary, libraries, threads): measured, [`resident_bytes`];
//! - the data set in memory: every image as C×H×W bytes and a 4-byte label;
//! - the parameters, [`WEIGHT_COPIES`] times: weights, gradients, momentum, and the
//!   convolution kernels' packed copy of each weight;
//! - per image of the batch: the values the forward pass keeps for the backward pass (the
//!   model's [`Footprint`], traced layer by layer), [`WORKING_ACTIVATIONS`] activations of the
//!   largest size (the backward pass's gradient buffers and the allocator's slack), and the
//!   input twice (the batch and its augmented copy).

use std::path::Path;

use crate::arch::{Cost, InputShape};
use crate::nn::trace::Footprint;

/// Copies of every parameter a training step holds: the weight, its gradient, its momentum
/// and the kernels' packed copy.
pub const WEIGHT_COPIES: f64 = 4.0;

/// Activations of the largest size alive at the backward pass's peak besides the kept ones,
/// per image. Measured: the peak resident memory of `runner bench --scaling` (ResNet-20, -56
/// and -110 at batch 32, 64 and 128, Intel Xeon, 2 threads) grew by 0.57–0.6 MiB per image
/// more than the kept values account for, 9–10 activations of ResNet's largest size (16 ×
/// 32 × 32 values); 8 keeps the estimate within a few percent of each measured peak and
/// below none by more than 5%.
pub const WORKING_ACTIVATIONS: f64 = 8.0;

/// A trial's estimated peak memory, in bytes, by part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The process before the trial.
    pub base: f64,
    /// The data set.
    pub data: f64,
    /// The parameters and their copies.
    pub weights: f64,
    /// What grows with the batch.
    pub activations: f64,
    /// The largest single buffer, in bytes: one activation of the batch, or the data set.
    pub largest_buffer: f64,
}

/// The setting an estimate's largest part grows with: what a message tells the user to lower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Data,
    Weights,
    Activations,
}

impl Estimate {
    /// The estimate for a model of `cost` on images of `input` at `batch` images per step,
    /// with `images` images in memory and the process at `base` bytes.
    pub fn new(cost: &Cost, input: InputShape, batch: usize, images: usize, base: f64) -> Estimate {
        const F32: f64 = 4.0;
        let Footprint { kept, largest } = cost.footprint;
        let pixels = (input.channels * input.height * input.width) as f64;
        let per_image = kept as f64 + WORKING_ACTIVATIONS * largest as f64 + 2.0 * pixels;
        let batch = batch as f64;
        let data = images as f64 * (pixels + 4.0);
        Estimate {
            base,
            data,
            weights: WEIGHT_COPIES * F32 * cost.params as f64,
            activations: F32 * batch * per_image,
            largest_buffer: (F32 * batch * (largest as f64).max(pixels)).max(data),
        }
    }

    pub fn total(&self) -> f64 {
        self.base + self.data + self.weights + self.activations
    }

    /// What the model adds to the process: weights and activations.
    pub fn model(&self) -> f64 {
        self.weights + self.activations
    }

    /// The part that is largest.
    pub fn largest_part(&self) -> Part {
        if self.activations >= self.weights && self.activations >= self.data {
            Part::Activations
        } else if self.weights >= self.data {
            Part::Weights
        } else {
            Part::Data
        }
    }

    /// Whether every buffer can exist at all: a size in bytes that an allocation (at most
    /// `isize::MAX` bytes) can take.
    pub fn representable(&self) -> bool {
        self.largest_buffer < isize::MAX as f64
    }

    /// "1.2 GiB (activations 1.0 GiB, weights 27 MiB, data 0 B, process 12 MiB)".
    pub fn describe(&self) -> String {
        format!(
            "{} (activations {}, weights {}, data {}, process {})",
            human(self.total()),
            human(self.activations),
            human(self.weights),
            human(self.data),
            human(self.base)
        )
    }
}

/// A byte count for people: `512 B`, `81 MiB`, `1.4 GiB`, `3.2e6 TiB`.
pub fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes.max(0.0);
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    match v {
        v if v >= 1e5 => format!("{v:.1e} {}", UNITS[u]),
        v if v >= 10.0 || u == 0 => format!("{v:.0} {}", UNITS[u]),
        v => format!("{v:.1} {}", UNITS[u]),
    }
}

/// How much memory this process may use, and what says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub bytes: u64,
    /// "the cgroup limit (memory.max)" or "available memory".
    pub source: String,
}

impl Limit {
    /// The limit of this process: its cgroup's memory limit where one is set, else what
    /// /proc/meminfo calls available plus what the process holds already. None where neither
    /// can be read (not Linux).
    pub fn of_this_process() -> Option<Limit> {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok();
        let limit = cgroup
            .as_deref()
            .and_then(|c| cgroup_limit(c, |p| std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(p)).ok()));
        if let Some((bytes, file)) = limit {
            return Some(Limit {
                bytes,
                source: format!("the cgroup limit ({file})"),
            });
        }
        let available = mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)?;
        Some(Limit {
            bytes: available + resident_bytes().unwrap_or(0),
            source: "available memory".to_string(),
        })
    }
}

/// The memory limit of the cgroup that `proc_self_cgroup` (the text of /proc/self/cgroup)
/// names, read through `read` (a path under /sys/fs/cgroup → its text), and the file that set
/// it: cgroup v2's `memory.max` of the process's group or, with the group's directory not
/// visible (a container's namespace), at the root; v1's `memory.limit_in_bytes`. None where
/// no limit is set ("max", or v1's near-2⁶³ "unlimited").
pub fn cgroup_limit(proc_self_cgroup: &str, read: impl Fn(&str) -> Option<String>) -> Option<(u64, String)> {
    let parse = |text: String| -> Option<u64> {
        let v: u64 = text.trim().parse().ok()?;
        // v1 writes "unlimited" as the largest page-aligned i64
        (v < 1 << 62).then_some(v)
    };
    for line in proc_self_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let path = path.trim_start_matches('/');
        let candidates: Vec<String> = if controllers.is_empty() {
            // v2: "0::/user.slice/…"
            [format!("{path}/memory.max"), "memory.max".to_string()]
                .into_iter()
                .map(|p| p.trim_start_matches('/').to_string())
                .collect()
        } else if controllers.split(',').any(|c| c == "memory") {
            [
                format!("memory/{path}/memory.limit_in_bytes"),
                "memory/memory.limit_in_bytes".to_string(),
            ]
            .into_iter()
            .map(|p| p.replace("//", "/"))
            .collect()
        } else {
            continue;
        };
        for file in candidates {
            if let Some(text) = read(&file) {
                return parse(text).map(|v| (v, file.rsplit('/').next().unwrap_or(&file).to_string()));
            }
        }
    }
    None
}

/// `MemAvailable` of /proc/meminfo's text, in bytes.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// This process's resident memory now (Linux `VmRSS`), in bytes.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(params: usize, kept: u64, largest: u64) -> Cost {
        Cost {
            params,
            mflops: 0.0,
            footprint: Footprint { kept, largest },
        }
    }

    #[test]
    fn the_estimate_adds_its_parts() {
        let e = Estimate::new(&cost(1000, 500, 100), InputShape::CIFAR, 10, 20, 1e6);
        assert_eq!(e.weights, 4.0 * 4.0 * 1000.0);
        assert_eq!(e.activations, 4.0 * 10.0 * (500.0 + 8.0 * 100.0 + 2.0 * 3072.0));
        assert_eq!(e.data, 20.0 * 3076.0);
        assert_eq!(e.total(), 1e6 + e.data + e.weights + e.activations);
        assert_eq!(e.largest_part(), Part::Activations);
        assert!(e.representable());
        let huge = Estimate::new(&cost(10, 500, 100), InputShape::CIFAR, usize::MAX / 2, 0, 0.0);
        assert!(!huge.representable());
        let data = Estimate::new(&cost(10, 5, 1), InputShape::CIFAR, 1, 1_000_000, 0.0);
        assert_eq!(data.largest_part(), Part::Data);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(512.0), "512 B");
        assert_eq!(human(81.0 * 1024.0 * 1024.0), "81 MiB");
        assert_eq!(human(1.5 * (1u64 << 30) as f64), "1.5 GiB");
        assert_eq!(human(3e20), "2.7e8 TiB");
    }

    #[test]
    fn cgroup_limits_v2_v1_and_none() {
        let files = |entries: &'static [(&'static str, &'static str)]| {
            move |p: &str| entries.iter().find(|(k, _)| *k == p).map(|(_, v)| v.to_string())
        };
        let v2 = "0::/user.slice/job.scope\n";
        assert_eq!(
            cgroup_limit(v2, files(&[("user.slice/job.scope/memory.max", "4294967296\n")])),
            Some((4 << 30, "memory.max".to_string()))
        );
        // a container sees its own group at the root
        assert_eq!(
            cgroup_limit("0::/\n", files(&[("memory.max", "1073741824\n")])),
            Some((1 << 30, "memory.max".to_string()))
        );
        assert_eq!(
            cgroup_limit(v2, files(&[("user.slice/job.scope/memory.max", "max\n")])),
            None
        );
        let v1 = "12:cpu,cpuacct:/x\n4:memory:/slurm/job7\n";
        assert_eq!(
            cgroup_limit(v1, files(&[("memory/slurm/job7/memory.limit_in_bytes", "2147483648")])),
            Some((2 << 30, "memory.limit_in_bytes".to_string()))
        );
        assert_eq!(
            cgroup_limit(
                v1,
                files(&[("memory/slurm/job7/memory.limit_in_bytes", "9223372036854771712")])
            ),
            None
        );
        assert_eq!(cgroup_limit(v2, files(&[])), None);
    }

    #[test]
    fn available_memory_from_meminfo() {
        let text = "MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(mem_available(text), Some(20_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
    }
}
