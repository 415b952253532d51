//! The suspending import, shared by the Rust benchmark guests.

#[link(wasm_import_module = "wasnap")]
unsafe extern "C" {
    #[link_name = "yield"]
    fn wasnap_yield(ptr: *const u8, len: i32) -> i32;
}

/// A possible suspension point: the host may unwind here. The benchmark's
/// host never does, and answers 0.
pub fn checkpoint(progress: &[u32; 2]) -> bool {
    // SAFETY: the host only reads `len` bytes (0 here) at `ptr`.
    unsafe { wasnap_yield(progress.as_ptr().cast(), 0) > 0 }
}
