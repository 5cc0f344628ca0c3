//! A global allocator that puts large buffers (model weights, KV caches, activations of long
//! batches) on transparent huge pages.
//!
//! A decoded token reads every weight once; with 4 KiB pages that is tens of thousands of
//! TLB misses per token, and this machine class streams memory markedly faster from 2 MiB
//! pages. Linux only backs memory with huge pages when asked (`madvise` mode, the common
//! default), so buffers of at least [`THRESHOLD`] bytes are aligned to 2 MiB and marked
//! `MADV_HUGEPAGE`; everything else goes to the system allocator untouched. Where the kernel
//! has huge pages off, the advice is ignored and nothing changes. `LLAMA_HUGE_PAGES=0`
//! turns it off (for comparisons).
//!
//! [`keep_freed_memory`] also stops glibc from handing large freed blocks back to the kernel:
//! training allocates and frees tensors of tens of MiB at every step, and a block that went
//! back to the kernel comes back as fresh pages the kernel must zero (a sixth of a 42M-model
//! training step's time before this).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

/// Huge page size on x86-64 and arm64 (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;
/// Buffers from this size on are aligned to and advised onto huge pages.
const THRESHOLD: usize = 4 << 20;

/// The system allocator, with large buffers on huge pages.
pub struct HugePageAlloc;

/// 0: not decided yet, 1: on, 2: off (from `LLAMA_HUGE_PAGES`).
static STATE: AtomicU8 = AtomicU8::new(0);

/// Whether large buffers go on huge pages (`LLAMA_HUGE_PAGES` is not `0`).
pub fn enabled() -> bool {
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
    if layout.size() >= THRESHOLD && enabled() {
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

// SAFETY: every method forwards to `System` with a layout derived deterministically from the
// caller's (`adjusted`), so each block is freed with the layout it was allocated with.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let layout = adjusted(layout);
        let ptr = unsafe { System.alloc(layout) };
        advise(ptr, layout);
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let layout = adjusted(layout);
        let ptr = unsafe { System.alloc_zeroed(layout) };
        advise(ptr, layout);
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, adjusted(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = adjusted(layout);
        let Ok(new) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        let new = adjusted(new);
        if old.align() == new.align() {
            // Same alignment class: the system can grow in place or move the block itself.
            let ptr = unsafe { System.realloc(ptr, old, new_size) };
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

/// Make glibc keep freed blocks of up to 32 MiB (its largest heap block) for reuse instead
/// of unmapping them and trimming the heap after every large free. No-op elsewhere.
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

    #[test]
    fn large_blocks_are_huge_page_aligned_and_round_trip() {
        let a = HugePageAlloc;
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
