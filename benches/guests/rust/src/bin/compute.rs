//! A compute-heavy workflow in Rust: the C `compute` guest's kernel (a
//! table-driven hash and a fixed-point iteration per item), with a possible
//! suspension after every item, several values live across it.

use wasnap_bench_guests::checkpoint;

const ITEMS: u32 = 400_000;
const TABLE: usize = 4096;

#[inline(never)]
fn work(table: &mut [u32; TABLE], mut state: u32, item: u32) -> u32 {
    let mut h = 0x811c_9dc5u32 ^ item;
    let (mut re, mut im) = ((state & 0xffff) as i32 - 0x8000, (state >> 16) as i32 - 0x8000);
    for _ in 0..24 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let slot = state as usize & (TABLE - 1);
        table[slot] = table[slot].wrapping_add(h);
        h = (h ^ table[(slot * 7) & (TABLE - 1)])
            .rotate_left(5)
            .wrapping_mul(0x0100_0193);
        let re2 = ((re as i64 * re as i64 - im as i64 * im as i64) >> 15) as i32;
        let im2 = ((re as i64 * im as i64) >> 14) as i32;
        re = (re2.wrapping_add((state & 0xfff) as i32)) & 0xffff;
        im = (im2.wrapping_sub((h & 0xfff) as i32)) & 0xffff;
    }
    h ^ re as u32 ^ ((im as u32) << 16)
}

fn main() {
    let mut table = Box::new([0u32; TABLE]);
    let mut checksum = 0u64;
    let mut state = 12345u32;
    for item in 0..ITEMS {
        let h = work(&mut table, state | 1, item);
        checksum = checksum.wrapping_mul(31).wrapping_add(h as u64);
        state = state
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223)
            .wrapping_add(h);
        if checkpoint(&[item, h]) {
            state ^= 0x9e37_79b9;
        }
    }
    println!("compute checksum {checksum:016x}");
}
