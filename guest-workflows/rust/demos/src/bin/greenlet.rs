//! The article's greenlet demo: main is f, g is a coroutine with its own stack.
use std::hint::black_box;
use wasnap_guest::{spawn, suspend, switch_to_parent};

/// "special-g-stack" with every byte shifted up by one. The text itself must
/// exist only where g builds it, on its own stack, never in a data segment
/// (the host looks for it in the snapshot to see that g's stack was saved).
/// Rust lays string constants end to end without terminators, so even
/// separate pieces "special", "-g-", "stack" would appear whole in .rodata.
const SHIFTED: &[u8; 15] = b"tqfdjbm.h.tubdl";

/// The bytes of "special-g-stack", one at a time, as the optimiser cannot
/// predict them.
fn mystack_bytes() -> impl Iterator<Item = u8> {
    black_box(SHIFTED).iter().map(|b| b - 1)
}

fn g() {
    println!("enter g");
    let mut mystack = [0u8; 16];
    for (slot, b) in mystack.iter_mut().zip(mystack_bytes()) {
        *slot = b;
    }
    // The buffer's address escapes: it must be in g's stack frame in memory.
    black_box(&mut mystack);
    switch_to_parent(0);
    let intact = black_box(&mystack).iter().zip(mystack_bytes()).all(|(a, b)| *a == b);
    if !intact {
        panic!("g's stack did not survive the switch");
    }
    println!("leave g");
}

fn main() {
    let greenlet_g = spawn(g, 16 * 1024);
    greenlet_g.switch(0);
    suspend(); // root.switch()
    println!("a");
    greenlet_g.switch(0);
    suspend();
    println!("b");
    suspend();
    println!("c");
}
