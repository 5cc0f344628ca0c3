//! The process's global allocator: jemalloc, keeping freed memory for reuse, with large
//! buffers (model weights, KV caches, activations of long batches) on transparent huge pages.
//!
//! **Freed memory is kept.** A training step allocates and frees tensors of tens of MiB
//! (activations and gradients of a batch 80 × ~75 tokens × 1376 wide are 33–41 MB each).
//! glibc serves blocks over 32 MiB (the most `M_MMAP_THRESHOLD` allows) straight from
//! `mmap` and unmaps them on free, so every step got fresh pages the kernel had to zero:
//! 12–19% of a 42M-model step on flex. jemalloc, configured below never to purge freed
//! pages (`dirty_decay_ms:-1`), hands the same pages back instead: a step went from
//! 7.7–8.3 s to 6.4–6.5 s, for ~500 MiB more peak memory (the pages of the largest step
//! stay mapped until the process exits, as for a long-running training job they would
//! anyway). On platforms without jemalloc (Windows) the system allocator is used.
//!
//! **Huge pages.** A decoded token reads every weight once; with 4 KiB pages that is tens of
//! thousands of TLB misses per token, and this machine class streams memory markedly faster
//! from 2 MiB pages. Linux only backs memory with huge pages when asked (`madvise` mode, the
//! common default), so buffers of at least [`THRESHOLD`] bytes are aligned to 2 MiB and
//! marked `MADV_HUGEPAGE`. Where the kernel has huge pages off, the advice is ignored and
//! nothing changes. `LLAMA_HUGE_PAGES=0` turns it off (for comparisons).
//!
//! The threshold is 16 MiB: the 42M model's activations (33–41 MB) and its embedding table
//! get huge pages, the many mid-sized temporaries of small models do not. With 4 MiB,
//! thousands of stories260K attention buffers of exactly 4 MiB, each 2 MiB-aligned and never
//! purged, fragmented jemalloc's kept pages: a `pretrain` run's resident memory grew to
//! 5–9 GB (150 steps: 7.6 GB; with 16 MiB, 241 MB), while a 42M training step and decoding
//! measured the same with either threshold, back to back.
//!
//! [`keep_freed_memory`] still tunes glibc's malloc, which C++ libraries (libtorch) use.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU8, Ordering};

#[cfg(not(unix))]
use std::alloc::System as Inner;
/// The allocator underneath: jemalloc where it builds (its own symbols, `_rjem_`-prefixed,
/// so C and C++ code keeps glibc's malloc).
#[cfg(unix)]
use tikv_jemallocator::Jemalloc as Inner;

/// jemalloc's options, read before `main` (its documented `malloc_conf` symbol): never
/// return freed pages to the kernel, so the next step reuses them without page faults or
/// zeroing. `_RJEM_MALLOC_CONF` in the environment still overrides them.
#[cfg(unix)]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: Option<&'static std::ffi::c_char> =
    // SAFETY: a pointer to the first byte of a static, NUL-terminated string.
    Some(unsafe { &*c"dirty_decay_ms:-1,muzzy_decay_ms:-1".as_ptr() });

/// Huge page size on x86-64 and arm64 (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;
/// Buffers from this size on are aligned to and advised onto huge pages.
const THRESHOLD: usize = 16 << 20;

/// jemalloc (or the system allocator), with large buffers on huge pages.
pub struct Allocator;

/// 0: not decided yet, 1: on, 2: off (from `LLAMA_HUGE_PAGES`).
static STATE: AtomicU8 = AtomicU8::new(0);

/// Whether large buffers go on huge pages (`LLAMA_HUGE_PAGES` is not `0`).
pub fn huge_pages_enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            // Reading the environment allocates only small strings (below THRESHOLD), so
            // this does not recurse into the large-buffer path.
            let on = std::env::var_os("LLAMA_HUGE_PAGES").is_none_or(|v| v != "0");
            STATE.store(if on { 1 } else { 2 }, Ordering::Relaxed);
            on
        }
    }
}

/// The layout actually requested from the system for `layout`: huge-page aligned when large.
fn adjusted(layout: Layout) -> Layout {
    if layout.size() >= THRESHOLD && huge_pages_enabled() {
        Layout::from_size_align(layout.size(), layout.align().max(HUGE_PAGE)).unwrap_or(layout)
    } else {
        layout
    }
}

fn advise(ptr: *mut u8, layout: Layout) {
    if !ptr.is_null() && layout.align() >= HUGE_PAGE {
        #[cfg(target_os = "linux")]
        // SAFETY: `ptr..ptr + size` is a live allocation of ours, and `ptr` is page aligned;
        // madvise only changes how the kernel backs it.
        unsafe {
            libc::madvise(ptr.cast(), layout.size(), libc::MADV_HUGEPAGE);
        }
    }
}

// SAFETY: every method forwards to `Inner` with a layout derived deterministically from the
// caller's (`adjusted`), so each block is freed with the layout it was allocated with.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let layout = adjusted(layout);
        let ptr = unsafe { Inner.alloc(layout) };
        advise(ptr, layout);
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let layout = adjusted(layout);
        let ptr = unsafe { Inner.alloc_zeroed(layout) };
        advise(ptr, layout);
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { Inner.dealloc(ptr, adjusted(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = adjusted(layout);
        let Ok(new) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        let new = adjusted(new);
        if old.align() == new.align() {
            // Same alignment class: the system can grow in place or move the block itself.
            let ptr = unsafe { Inner.realloc(ptr, old, new_size) };
            advise(ptr, new);
            return ptr;
        }
        // Crossing the threshold: a fresh block with the other alignment, then copy.
        let fresh = unsafe { self.alloc(new) };
        if !fresh.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        fresh
    }
}

/// How long jemalloc waits before it returns freed pages to the kernel, in milliseconds:
/// `-1` (never) is [`MALLOC_CONF`]'s setting; `_RJEM_MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0`
/// returns them at once, for less peak memory and slower training steps (the README's
/// *Performance* section measures both). `None` without jemalloc.
pub fn freed_page_decay_ms() -> Option<isize> {
    #[cfg(unix)]
    {
        jemalloc_option(c"opt.dirty_decay_ms")
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// One of jemalloc's `ssize_t` options (`opt.*`), or `None` if it cannot be read.
#[cfg(unix)]
fn jemalloc_option(name: &std::ffi::CStr) -> Option<isize> {
    let mut value: isize = 0;
    let mut len = size_of::<isize>();
    // SAFETY: reads one ssize_t option into `value`, whose size is passed.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            (&mut value as *mut isize).cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (rc == 0).then_some(value)
}

/// While alive, jemalloc returns freed pages to the kernel at once (decay 0 on every arena);
/// dropped, it keeps them again ([`MALLOC_CONF`]'s setting).
///
/// Loading converts tensor by tensor (bf16 to f32, f32 to f16 or int8): each conversion frees
/// a buffer of another size than the one it allocates, so kept pages pile up beside the model
/// instead of being reused. On the 1.1B shape that put the loading peak at 1.17× the f16
/// weights and 1.29× the q8 ones (1.07× each with the pages returned); decoding, which reuses
/// same-sized temporaries, still keeps them.
pub struct ReturnFreedPages;

impl ReturnFreedPages {
    /// Return freed pages until the guard is dropped. No-op without jemalloc.
    pub fn start() -> Self {
        #[cfg(unix)]
        set_decay_ms(0);
        Self
    }
}

impl Drop for ReturnFreedPages {
    fn drop(&mut self) {
        #[cfg(unix)]
        set_decay_ms(freed_page_decay_ms().unwrap_or(-1));
    }
}

/// Set jemalloc's dirty and muzzy decay of every arena, and of arenas made later, to `ms`.
/// Arenas not yet in use refuse the write, which is fine: they take the default when made.
#[cfg(unix)]
fn set_decay_ms(ms: isize) {
    let write = |name: &str| {
        let Ok(name) = std::ffi::CString::new(name) else {
            return;
        };
        let mut value = ms;
        // SAFETY: writes one ssize_t setting from `value`, whose size is passed.
        unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                (&mut value as *mut isize).cast(),
                size_of::<isize>(),
            );
        }
    };
    let mut arenas: u32 = 0;
    let mut len = size_of::<u32>();
    // SAFETY: reads one unsigned setting into `arenas`, whose size is passed.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arenas.narenas".as_ptr(),
            (&mut arenas as *mut u32).cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return;
    }
    for kind in ["dirty", "muzzy"] {
        write(&format!("arenas.{kind}_decay_ms"));
        for arena in 0..arenas {
            write(&format!("arena.{arena}.{kind}_decay_ms"));
        }
    }
}

/// Make glibc keep freed blocks of up to 32 MiB (its largest heap block) for reuse instead
/// of unmapping them and trimming the heap after every large free: for what still allocates
/// through glibc (libtorch's tensors on `tch-cpu`). No-op elsewhere.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any large allocation.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// jemalloc read [`MALLOC_CONF`]: freed pages are never purged.
    #[cfg(unix)]
    #[test]
    fn jemalloc_keeps_freed_pages() {
        for option in [c"opt.dirty_decay_ms", c"opt.muzzy_decay_ms"] {
            assert_eq!(jemalloc_option(option), Some(-1), "{option:?}");
        }
        assert_eq!(freed_page_decay_ms(), Some(-1));
    }

    /// Loading returns freed pages; afterwards they are kept again.
    #[cfg(unix)]
    #[test]
    fn freed_pages_are_returned_while_the_guard_lives() {
        let decay = || jemalloc_option(c"arenas.dirty_decay_ms");
        let guard = ReturnFreedPages::start();
        assert_eq!(decay(), Some(0));
        assert_eq!(jemalloc_option(c"arena.0.muzzy_decay_ms"), Some(0));
        drop(guard);
        assert_eq!(decay(), Some(-1));
        assert_eq!(jemalloc_option(c"arena.0.dirty_decay_ms"), Some(-1));
    }

    #[test]
    fn large_blocks_are_huge_page_aligned_and_round_trip() {
        let a = Allocator;
        let layout = Layout::from_size_align(THRESHOLD + 123, 8).unwrap();
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % HUGE_PAGE, 0);
            p.write_bytes(7, layout.size());
            // Shrink below the threshold and grow again: contents kept.
            let q = a.realloc(p, layout, 1000);
            assert_eq!(*q.add(999), 7);
            let small = Layout::from_size_align(1000, 8).unwrap();
            let r = a.realloc(q, small, THRESHOLD * 2);
            assert_eq!(*r.add(999), 7);
            assert_eq!(r as usize % HUGE_PAGE, 0);
            a.dealloc(r, Layout::from_size_align(THRESHOLD * 2, 8).unwrap());
        }
    }
}
