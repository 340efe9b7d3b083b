//! Any bytes fed to the HTTP/1 framing scanner give the same verdict however the reads
//! split them, and never a panic: a request weir accepts or refuses must not depend on
//! how the network cut it.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../../src/framing/mod.rs"]
mod framing;

use framing::{Limits, Scanner};

fn run(bytes: &[u8], cuts: &[usize]) -> (Result<(), framing::Refusal>, Option<u64>, u64) {
    let limits = Limits { header_bytes: 256, headers: 8, uri_bytes: 64, ..Limits::default() };
    let mut s = Scanner::new(limits);
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let cut = cut.clamp(from, bytes.len());
        if let Err(e) = s.feed(&bytes[from..cut]) {
            return (Err(e), None, 0);
        }
        from = cut;
    }
    (Ok(()), s.head_start(), s.position())
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let whole = run(bytes, &[]);
    let step = usize::from(seed % 7) + 1;
    let cuts: Vec<usize> = (0..bytes.len()).step_by(step).collect();
    assert_eq!(whole, run(bytes, &cuts), "split every {step} bytes");
});
