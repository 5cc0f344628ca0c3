//! Which int8 kernel runs: the fastest this CPU has for a group size, at most the one that
//! `LLAMA_INT8_KERNEL` names (so that kernels can be measured against each other with one
//! binary). The CPU's features and the variable are read once.

use std::sync::OnceLock;

/// The variable that caps the kernel.
pub const KERNEL_VAR: &str = "LLAMA_INT8_KERNEL";

/// An implementation of the int8 product, slowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kernel {
    Portable,
    Avx2,
    Vnni,
}

impl Kernel {
    const ALL: [Self; 3] = [Self::Portable, Self::Avx2, Self::Vnni];

    /// The kernel's name, as `LLAMA_INT8_KERNEL` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vnni => "avx512-vnni",
            Self::Avx2 => "avx2",
            Self::Portable => "portable",
        }
    }

    /// Whether this CPU has the instructions (whatever the group size).
    fn on_cpu(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Self::Vnni => {
                    std::arch::is_x86_feature_detected!("avx512f")
                        && std::arch::is_x86_feature_detected!("avx512vnni")
                }
                Self::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
                Self::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Self::Portable
        }
    }

    /// Whether the kernel computes groups of `group` values: VNNI whole quads, AVX2 whole
    /// 32-byte vectors.
    fn takes(self, group: usize) -> bool {
        match self {
            Self::Vnni => group.is_multiple_of(4),
            Self::Avx2 => group.is_multiple_of(32),
            Self::Portable => true,
        }
    }
}

/// The kernel `LLAMA_INT8_KERNEL` caps the choice at (`None`: unset), or why its value is
/// not a kernel's name.
pub fn kernel_cap() -> Result<Option<Kernel>, String> {
    match std::env::var(KERNEL_VAR) {
        Err(_) => Ok(None),
        Ok(value) => Kernel::ALL
            .into_iter()
            .find(|k| k.name() == value)
            .map(Some)
            .ok_or_else(|| {
                format!("{KERNEL_VAR}={value}: not a kernel (avx512-vnni, avx2 or portable)")
            }),
    }
}

/// Whether `kernel` runs here for groups of `group`: on this CPU, and at most the cap (an
/// invalid cap counts as none; the CLI refuses it first).
pub fn runs(kernel: Kernel, group: usize) -> bool {
    static CAP: OnceLock<Option<Kernel>> = OnceLock::new();
    let cap = *CAP.get_or_init(|| kernel_cap().ok().flatten());
    kernel.takes(group) && kernel.on_cpu() && cap.is_none_or(|cap| kernel <= cap)
}

/// The fastest kernel that [`runs`] for groups of `group`.
pub fn best(group: usize) -> Kernel {
    Kernel::ALL
        .into_iter()
        .rev()
        .find(|&k| runs(k, group))
        .unwrap_or(Kernel::Portable)
}
