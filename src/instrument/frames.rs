//! Reading an unwound stack back: the frames wasnap's instrumentation
//! saved, as the engine checks them before a rewind and `wasnap inspect`
//! shows them.

use anyhow::{Result, bail};

use super::{CallSite, FRAME_HEADER_SIZE, Metadata};

/// One frame of an unwound stack.
#[derive(Clone, Copy, Debug)]
pub struct SavedFrame<'a> {
    /// The instrumented function it belongs to.
    pub function: u32,
    /// Which of that function's suspending calls it was suspended in.
    pub call_index: u32,
    /// That call site, with the layout of the values saved.
    pub site: &'a CallSite,
    /// The saved values, [`CallSite::size`] bytes.
    pub bytes: &'a [u8],
}

impl Metadata {
    /// The frames of an unwound stack of this module, outermost first (the
    /// order a rewind enters them). Fails unless the stack is exactly a
    /// sequence of frames whose functions and call sites exist and whose
    /// sizes are what those call sites save.
    ///
    /// Each frame's header is at its end, so the stack is read from the
    /// top down.
    pub fn saved_frames<'a>(&'a self, stack: &'a [u8]) -> Result<Vec<SavedFrame<'a>>> {
        let mut frames = Vec::new();
        let mut end = stack.len();
        while end > 0 {
            let Some(header_start) = end.checked_sub(FRAME_HEADER_SIZE as usize) else {
                bail!("the unwound stack is truncated: {end} bytes left, less than a frame header");
            };
            let word =
                |at: usize| u32::from_le_bytes(stack[at..at + 4].try_into().expect("4 bytes"));
            let function = word(header_start);
            let call_index = word(header_start + 4);
            let Some(layout) = self.frames.get(&function) else {
                bail!(
                    "the unwound stack names function {function}, which the module does not instrument"
                );
            };
            let Some(site) = layout.call_sites.get(call_index as usize) else {
                bail!(
                    "the unwound stack names call {call_index} of function {function}, which has no such call"
                );
            };
            let Some(start) = header_start.checked_sub(site.size as usize) else {
                bail!(
                    "the unwound stack is truncated in a frame of function {function}: call {call_index} saves {} bytes, {header_start} are left",
                    site.size
                );
            };
            frames.push(SavedFrame {
                function,
                call_index,
                site,
                bytes: &stack[start..header_start],
            });
            end = start;
        }
        Ok(frames)
    }
}
